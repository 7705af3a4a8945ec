"""The `openharmony` command line (typer).

    openharmony generate "The sky is blue because"          # raw text completion
    openharmony generate --chat "Why is the sky blue?"      # one harmony chat turn
    echo "The sky is" | openharmony generate -m M           # the prompt from stdin (or '-')
    openharmony chat                                        # interactive, multi-turn
    openharmony download [openai/gpt-oss-20b]               # the Hugging Face layout only
    openharmony info [MODEL | --model MODEL]                # sizes and memory, from headers
    openharmony serve --model M                             # an OpenAI-compatible server

Flags people bring from mlx-lm and llama.cpp work too: -m/--model, -p/--prompt, -n/--max-tokens,
--temp.

Errors caused by the user's input (every `OpenHarmonyError`, and typer's own bad-flag errors)
are printed as one line on stderr with a non-zero exit code; `--debug` shows the traceback
instead. Anything else is a bug and keeps its traceback. The loader, generation and
huggingface-hub are imported inside the commands that use them.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from .chat import REASONING, TEXT, TOOL_CALL
from .download import DEFAULT_MODEL, download_model, exit_at_once_on_ctrl_c, resolve_model
from .errors import DistributedError, OpenHarmonyError
from .memory import checkpoint_summary
from .sampling import SamplingOptions, option_range

EXIT_ERROR = 1  # typer's own usage errors exit with 2
EXIT_INTERRUPTED = 130


class _Settings:
    """The global options, set by the app callback for the command that follows."""

    debug = False
    vocab: str | None = None
    rank = 0  # under mlx.launch: this process's rank; only rank 0 reads input and prints
    group = None  # the distributed group (docs/distributed.md), once joined
    joined = False


settings = _Settings()


class OneLineErrors(TyperGroup):
    """Turns user errors into one line on stderr instead of a traceback or a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        settings.debug, settings.rank, settings.group, settings.joined = False, 0, None, False
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # typer's bad flags and arguments
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            return self._fail(e.format_message() + hint, e.exit_code, standalone_mode)
        except (typer.Abort, KeyboardInterrupt):
            return self._fail("interrupted", EXIT_INTERRUPTED, standalone_mode)
        except OpenHarmonyError as e:
            if settings.debug:
                raise
            return self._fail(str(e), EXIT_ERROR, standalone_mode)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    @staticmethod
    def _fail(message: str, code: int, standalone_mode: bool):
        if settings.rank:  # the other ranks print their errors only (_only_rank0_prints)
            sys.stderr = sys.__stderr__
            message = f"rank {settings.rank}: {message}"
        # Messages from libraries may span lines; the contract is one line.
        typer.echo("error: " + " ".join(message.split()), err=True)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    name="openharmony",
    help="GPT-OSS (gpt-oss-20b / gpt-oss-120b) inference on MLX.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    vocab: Annotated[Optional[str], typer.Option(
        "--vocab", metavar="PATH",
        help="The o200k_base.tiktoken vocabulary file (or a folder holding it). Default: "
             "$OPENHARMONY_VOCAB, else tiktoken's cache (downloaded once).")] = None,
) -> None:
    settings.debug = debug
    settings.vocab = vocab
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def main() -> None:
    """The console script `openharmony`."""
    app(prog_name="openharmony")


# -- shared options -----------------------------------------------------------------------


class ReasoningEffort(str, enum.Enum):
    low = "low"
    medium = "medium"
    high = "high"


class DType(str, enum.Enum):  # the model's compute dtypes (model.COMPUTE_DTYPES)
    float32 = "float32"
    bfloat16 = "bfloat16"


ModelOption = Annotated[str, typer.Option(
    "--model", "-m", help="A checkpoint folder, or a hub id (found in the Hugging Face cache, "
                          "else downloaded).")]
DTypeOption = Annotated[Optional[DType], typer.Option(
    help="Compute dtype of the dense weights (MXFP4 experts stay packed). "
         "Default: float32 on the CPU, bfloat16 on a GPU.")]


class Precision(str, enum.Enum):  # runtime.PRECISIONS
    exact = "exact"
    fast = "fast"


PrecisionOption = Annotated[Optional[Precision], typer.Option(
    help="exact: float32 products and sums (parity with transformers). fast: on the CPU's "
         "native kernels, prompt chunks take int8 products for the experts and bf16 ones for "
         "the dense layers (decode stays exact): faster prefill, small logit changes "
         "(against transformers on a 2-layer gpt-oss-20b-shaped checkpoint: top-1 agreement "
         "0.965, mean KL 3.1e-3, about bf16 compute's 0.969 and 3.7e-3; docs/speed.md). "
         "Default: $OPENHARMONY_PRECISION, else exact.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", min=1,
                                         help="Most tokens to generate.")]


def _sampling_value(field: str, number: type):
    """A parser that checks a flag's value as `SamplingOptions` does (range and finiteness, so
    nan and inf are refused), before the model loads: one set of rules for the CLI and the API."""

    def parse(text: str):
        try:
            value = number(text)
            SamplingOptions(**{field: value})
        except ValueError as e:  # SamplingError is a ValueError
            raise typer.BadParameter(str(e)) from None
        return value

    return parse


def _sampling_flag(field: str, *names: str):
    """The flag of SamplingOptions field `field`: its range and meaning from sampling.py."""
    spec = option_range(field)
    number = int if spec.integer else float
    return Annotated[number, typer.Option(*names, parser=_sampling_value(field, number),
                                          help=f"{spec.describe()}; {spec.help}.")]


_DEFAULTS = SamplingOptions()
Temperature = _sampling_flag("temperature", "--temperature", "--temp")
TopP = _sampling_flag("top_p", "--top-p")
TopK = _sampling_flag("top_k", "--top-k")
MinP = _sampling_flag("min_p", "--min-p")
RepetitionPenalty = _sampling_flag("repetition_penalty", "--repetition-penalty")
PresencePenalty = _sampling_flag("presence_penalty", "--presence-penalty")
FrequencyPenalty = _sampling_flag("frequency_penalty", "--frequency-penalty")
Seed = Annotated[Optional[int], typer.Option(help="Seed of the sampler (reproducible output).")]
Effort = Annotated[ReasoningEffort, typer.Option(help="How much the model reasons (chat).")]
System = Annotated[Optional[str], typer.Option(
    help="Replaces the model identity line of the system message (chat).")]
Developer = Annotated[Optional[str], typer.Option(
    help="Developer instructions, what other APIs call the system prompt (chat).")]
ShowReasoning = Annotated[bool, typer.Option(
    "--show-reasoning", help="Show the analysis channel (chain of thought), dimmed.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v",
                                       help="Print timing statistics to stderr at the end.")]


def _kv_bits(value: int | None) -> int | None:
    if value is not None and value not in (4, 8):  # cache.quantized.BITS, before any loading
        raise typer.BadParameter(f"must be 4 or 8, got {value}")
    return value


KVBits = Annotated[Optional[int], typer.Option(
    "--kv-bits", callback=_kv_bits,
    help="Store the full-attention layers' keys and values quantized to 8 (or 4) bits "
         "(docs/cache.md). Default: float, as computed.")]


def _sampling(temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty,
              frequency_penalty) -> SamplingOptions:
    return SamplingOptions(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                           repetition_penalty=repetition_penalty,
                           presence_penalty=presence_penalty,
                           frequency_penalty=frequency_penalty)


def _load(model: str, dtype: DType | None, precision: Precision | None = None):
    """The tokenizer (first: a missing vocabulary fails fast) and the model.

    Under mlx.launch the group is joined before anything can fail, so that a rank that fails
    leaves it (the others' next collective notices) rather than never joining it.
    """
    from .tokenizer import load_tokenizer

    group = _group()
    tokenizer = load_tokenizer(settings.vocab)
    folder = resolve_model(model)
    from .load import load_model

    loaded = load_model(folder, dtype.value if dtype is not None else None, group=group,
                        precision=precision.value if precision is not None else None)
    if group is not None and group.rank() != 0:
        _only_rank0_prints(group.rank())
    if loaded.config.vocab_size < tokenizer.n_vocab:
        raise OpenHarmonyError(f"the model's vocabulary ({loaded.config.vocab_size} tokens) is "
                               f"smaller than the tokenizer's ({tokenizer.n_vocab})")
    return tokenizer, loaded


def _group():
    """The distributed group when started by mlx.launch (joined on first use), else None."""
    if not settings.joined:
        from .parallel import init_group

        settings.group, settings.joined = init_group(), True
    return settings.group


def _only_rank0_prints(rank: int) -> None:
    """On ranks other than 0: no output but errors (which `OneLineErrors` prints)."""
    settings.rank = rank
    sys.stdout = sys.stderr = open(os.devnull, "w")


def _read_input(group) -> str | None:
    """The next chat line: rank 0 reads it, every rank gets it."""
    from .parallel import broadcast_text

    line = _read_line(">>> ") if settings.rank == 0 else None
    return line if group is None else broadcast_text(line, group)


def _write(text: str, dim: bool = False) -> None:
    # click.echo drops the styling when stdout is not a terminal.
    typer.echo(typer.style(text, dim=True) if dim else text, nl=False)
    sys.stdout.flush()


class _ReplyPrinter:
    """Prints a streamed harmony reply: what is meant for the user (the final answer, and
    commentary preambles) plainly, the reasoning (analysis channel) dimmed when asked for,
    tool calls dimmed as `[tool call] RECIPIENT ARGUMENTS`."""

    def __init__(self, show_reasoning: bool):
        self.show_reasoning = show_reasoning
        self._current: int | None = None
        self._wrote_any = False

    def __call__(self, event) -> None:
        if event.message_index != self._current:
            self._start_message(event)
            self._current = event.message_index
        if event.kind == TEXT:
            _write(event.delta)
        elif self.show_reasoning or event.kind != REASONING:
            _write(event.delta, dim=True)

    def _start_message(self, event) -> None:
        if event.kind == REASONING and not self.show_reasoning:
            return
        if self._wrote_any:
            _write("\n")
        if event.kind == TOOL_CALL:
            _write(f"[tool call] {event.recipient} ", dim=True)
        elif event.kind == REASONING:
            _write("[analysis] ", dim=True)
        self._wrote_any = True

    def end(self) -> None:
        if self._wrote_any:
            _write("\n")


def _print_stats(stats) -> None:
    """One line of `GenerationStats` on stderr."""
    typer.echo(
        f"prompt: {stats.prompt_tokens} tokens ({stats.reused_prompt_tokens} reused) in "
        f"{stats.prompt_seconds:.2f} s, {stats.prompt_tokens_per_second:.1f} tokens/s; "
        f"generation: {stats.generated_tokens} tokens, "
        f"{stats.generation_tokens_per_second:.1f} tokens/s; "
        f"peak memory {stats.peak_memory_bytes / 1e9:.2f} GB", err=True)


# -- generate -----------------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(
        metavar="PROMPT", show_default=False,
        help="The prompt: raw text, or the user message with --chat. '-' or none: stdin.")
    ] = None,
    prompt_option: Annotated[Optional[str], typer.Option(
        "--prompt", "-p", help="The prompt, as an option (instead of PROMPT).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Send the prompt as a harmony user "
                                                      "message and print the final answer.")
                    ] = False,
    model: ModelOption = DEFAULT_MODEL,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = _DEFAULTS.temperature,
    top_p: TopP = _DEFAULTS.top_p,
    top_k: TopK = _DEFAULTS.top_k,
    min_p: MinP = _DEFAULTS.min_p,
    repetition_penalty: RepetitionPenalty = _DEFAULTS.repetition_penalty,
    presence_penalty: PresencePenalty = _DEFAULTS.presence_penalty,
    frequency_penalty: FrequencyPenalty = _DEFAULTS.frequency_penalty,
    seed: Seed = None,
    reasoning_effort: Effort = ReasoningEffort.medium,
    system: System = None,
    developer: Developer = None,
    dtype: DTypeOption = None,
    precision: PrecisionOption = None,
    kv_bits: KVBits = None,
    show_reasoning: ShowReasoning = False,
    verbose: Verbose = False,
) -> None:
    """Stream a completion of PROMPT to stdout."""
    from .cache import PromptCache
    from .generate import stream_generate

    prompt = _one_of("PROMPT", prompt, "--prompt", prompt_option)
    group = _group()
    if group is None or group.rank() == 0:  # under mlx.launch only rank 0 reads stdin
        prompt = _read_prompt(prompt)
    if group is not None:
        from .parallel import broadcast_text

        prompt = broadcast_text(prompt, group)
    tokenizer, loaded = _load(model, dtype, precision)
    sampling = _sampling(temperature, top_p, top_k, min_p, repetition_penalty,
                         presence_penalty, frequency_penalty)
    if chat:
        from .chat import Chat, ChatOptions

        conversation = Chat(tokenizer, ChatOptions(reasoning_effort=reasoning_effort.value,
                                                   system=system, developer=developer))
        conversation.add_user(prompt)
        stats = _chat_turn(loaded, tokenizer, conversation, sampling, max_tokens, seed,
                           show_reasoning, PromptCache(loaded, kv_bits=kv_bits))
    else:
        stats = None
        for chunk in stream_generate(loaded, prompt, tokenizer=tokenizer, sampling=sampling,
                                     max_tokens=max_tokens, seed=seed, kv_bits=kv_bits):
            _write(chunk.text)
            stats = chunk.stats or stats
        _write("\n")
    if verbose and stats is not None:
        _print_stats(stats)


def _one_of(positional_name: str, positional: str | None, option_name: str,
             option: str | None, default: str | None = None) -> str | None:
    """The value given as an argument or as an option (not both: which one would be meant?)."""
    if positional is not None and option is not None:
        raise typer.BadParameter("both given; give one",
                                 param_hint=f"'{positional_name}' / '{option_name}'")
    return positional if positional is not None else option if option is not None else default


def _read_prompt(prompt: str | None) -> str:
    """The prompt; `-` or none reads stdin when it is a pipe or a file. Trailing newlines are
    dropped, as the shell's "$(cat file)" does."""
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and sys.stdin.isatty():
        raise typer.BadParameter("none given: pass it as PROMPT, with --prompt/-p, or on "
                                 "stdin ('-' or a pipe)", param_hint="'PROMPT'")
    text = sys.stdin.read().rstrip("\n")
    if not text:
        raise typer.BadParameter("stdin is empty", param_hint="'PROMPT'")
    return text


def _chat_turn(model, tokenizer, conversation, sampling, max_tokens, seed, show_reasoning,
               prompt_cache):
    """Generate the assistant's reply to `conversation`, stream it, and append it."""
    from .chat import ChatTurn

    turn = ChatTurn(model, tokenizer, conversation.render(), max_tokens=max_tokens,
                    sampling=sampling, seed=seed, prompt_cache=prompt_cache)
    printer = _ReplyPrinter(show_reasoning)
    for event in turn:
        printer(event)
    printer.end()
    if turn.finish_reason == "length":
        # Long reasoning can use up the budget before the answer starts: say so.
        typer.echo(f"(the reply reached --max-tokens {max_tokens})", err=True)
    conversation.add_assistant_messages(turn.messages)
    return turn.stats


# -- chat ---------------------------------------------------------------------------------

CHAT_HELP = "Type a message; /reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops an answer."


@app.command()
def chat(
    model: ModelOption = DEFAULT_MODEL,
    max_tokens: MaxTokens = 4096,
    temperature: Temperature = _DEFAULTS.temperature,
    top_p: TopP = _DEFAULTS.top_p,
    top_k: TopK = _DEFAULTS.top_k,
    min_p: MinP = _DEFAULTS.min_p,
    repetition_penalty: RepetitionPenalty = _DEFAULTS.repetition_penalty,
    presence_penalty: PresencePenalty = _DEFAULTS.presence_penalty,
    frequency_penalty: FrequencyPenalty = _DEFAULTS.frequency_penalty,
    seed: Seed = None,
    reasoning_effort: Effort = ReasoningEffort.medium,
    system: System = None,
    developer: Developer = None,
    dtype: DTypeOption = None,
    precision: PrecisionOption = None,
    kv_bits: KVBits = None,
    show_reasoning: ShowReasoning = False,
    verbose: Verbose = False,
) -> None:
    """Chat with the model, multi-turn.

    Each turn reuses the computed prefix of the previous ones. /reset starts over, /exit (or
    Ctrl-D) quits, Ctrl-C stops an answer.
    """
    from .cache import PromptCache
    from .chat import Chat, ChatOptions

    tokenizer, loaded = _load(model, dtype, precision)
    sampling = _sampling(temperature, top_p, top_k, min_p, repetition_penalty,
                         presence_penalty, frequency_penalty)
    options = ChatOptions(reasoning_effort=reasoning_effort.value, system=system,
                          developer=developer)
    conversation = Chat(tokenizer, options)
    prompt_cache = PromptCache(loaded, kv_bits=kv_bits)
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # not on every platform
        pass
    typer.echo(CHAT_HELP, err=True)
    while True:
        line = _read_input(loaded.group)
        if line is None or line.strip() in ("/exit", "/quit"):
            break
        message = line.strip()
        if not message:
            continue
        if message == "/reset":
            conversation = Chat(tokenizer, options)
            prompt_cache = PromptCache(loaded, kv_bits=kv_bits)
            typer.echo("(new conversation)", err=True)
            continue
        before_turn = list(conversation.messages)
        conversation.add_user(message)
        try:
            stats = _chat_turn(loaded, tokenizer, conversation, sampling, max_tokens, seed,
                               show_reasoning, prompt_cache)
        except (KeyboardInterrupt, OpenHarmonyError) as e:
            # A stopped turn, or one that cannot run (too long for the context, an answer that
            # breaks the harmony format), is forgotten and the conversation goes on; the
            # prompt cache drops what the next prompt no longer shares. Across ranks Ctrl-C
            # cannot stop them all at the same token, and a lost rank is lost: both end it.
            if isinstance(e, DistributedError) or (
                    loaded.group is not None and isinstance(e, KeyboardInterrupt)):
                raise
            if settings.debug and not isinstance(e, KeyboardInterrupt):
                raise
            conversation.messages[:] = before_turn
            reason = "stopped" if isinstance(e, KeyboardInterrupt) else "error: " + " ".join(
                str(e).split())
            typer.echo(f"\n{reason}", err=True)
            continue
        if verbose and stats is not None:
            _print_stats(stats)


def _read_line(prompt: str) -> str | None:
    """A line from stdin, None at end of input. Ctrl-C at the prompt just asks again."""
    while True:
        try:
            return input(prompt)
        except EOFError:
            typer.echo("")
            return None
        except KeyboardInterrupt:
            typer.echo("\n(" + CHAT_HELP + ")", err=True)


# -- serve --------------------------------------------------------------------------------


@app.command()
def serve(
    model: ModelOption = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="The address to listen on (loopback by default).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="The port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        envvar="OPENHARMONY_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every request.")] = None,
    dtype: DTypeOption = None,
    precision: PrecisionOption = None,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests that may wait; more get "
                                                       "429.")] = 16,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests decoded together, one "
                                                       "batched step per token.")] = 8,
    cache_gb: Annotated[float, typer.Option(min=0.0, help="Keys and values kept for prompt "
                                                          "reuse across requests, in GB.")
                        ] = 4.0,
    kv_bits: KVBits = None,
) -> None:
    """An OpenAI-compatible server: the Responses API and Chat Completions (docs/server.md).

    Ctrl-C or SIGTERM stops it cleanly.
    """
    import logging

    import uvicorn

    from .server.app import create_app

    tokenizer, loaded = _load(model, dtype, precision)
    if kv_bits is not None:
        loaded.make_cache(kv_bits=kv_bits)  # a model that cannot take it fails now
    if settings.rank:  # expert parallel: rank 0 serves, the others follow its turns
        from .server.engine import follow

        return follow(loaded, tokenizer, int(cache_gb * 1e9), kv_bits)
    model_id = model if not Path(model).expanduser().exists() else Path(model).name
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("openharmony.server").setLevel(logging.INFO)  # one line per request
    app_ = create_app(loaded, tokenizer, model_id, api_key=api_key, max_queue=max_queue,
                      max_cache_bytes=int(cache_gb * 1e9), kv_bits=kv_bits,
                      max_batch=max_batch)
    typer.echo(f"serving {model_id} on http://{host}:{port}/v1"
               + (" (API key required)" if api_key else ""), err=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


# -- download -----------------------------------------------------------------------------


@app.command()
def download(
    repo_id: Annotated[Optional[str], typer.Argument(
        metavar="REPO_ID", show_default=False,
        help=f"The hub model id. Default: {DEFAULT_MODEL}.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="The hub model id, as an option (instead of REPO_ID).")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="The Hugging Face cache to use (default: $HF_HUB_CACHE, else "
             "$HF_HOME/hub, else ~/.cache/huggingface/hub).")] = None,
    local_dir: Annotated[Optional[Path], typer.Option(
        help="Put the files in this folder instead of the cache.")] = None,
    original: Annotated[bool, typer.Option(
        "--original", help="Also fetch original/ (OpenAI's layout of the same weights).")
    ] = False,
    metal: Annotated[bool, typer.Option("--metal", help="Also fetch metal/ (a Metal build).")
                     ] = False,
) -> None:
    """Download a checkpoint (the Hugging Face layout only).

    --original and --metal add the other copies of the weights. Interrupted downloads resume:
    run the same command again.
    """
    repo_id = _one_of("REPO_ID", repo_id, "--model", model, DEFAULT_MODEL)
    if cache_dir is not None and local_dir is not None:
        raise OpenHarmonyError("--cache-dir and --local-dir exclude each other")
    with exit_at_once_on_ctrl_c("\ninterrupted: the files already complete are kept; run the "
                                "same command again to fetch the rest", EXIT_INTERRUPTED):
        folder = download_model(repo_id, revision=revision, cache_dir=cache_dir,
                                local_dir=local_dir, original=original, metal=metal)
    typer.echo(str(folder))


# -- info ---------------------------------------------------------------------------------

@app.command()
def info(
    model: Annotated[Optional[str], typer.Argument(
        metavar="MODEL", show_default=False,
        help=f"A checkpoint folder or a hub id (in the cache). Default: {DEFAULT_MODEL}.")
    ] = None,
    model_option: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="The same, as an option (instead of MODEL).")] = None,
    dtype: DTypeOption = None,
    context: Annotated[int, typer.Option(min=1, help="Context length for the KV cache "
                                                     "estimate.")] = 8192,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Parameter counts, size on disk and memory needs of a checkpoint.

    Reads only the config and the safetensors headers: no weights are loaded.
    """
    from .weights import open_checkpoint

    model = _one_of("MODEL", model, "--model", model_option, DEFAULT_MODEL)
    checkpoint = open_checkpoint(resolve_model(model, download=False))
    if dtype is None:
        from .model import default_dtype

        dtype_name = str(default_dtype()).removeprefix("mlx.core.")
    else:
        dtype_name = dtype.value
    s = checkpoint_summary(checkpoint, dtype_name, context)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    rows = [
        ("checkpoint", f"{s['path']} ({s['layout']} layout, {s['files']} file(s))"),
        ("layers", f"{s['layers']} ({s['sliding_layers']} with a sliding window of "
                   f"{s['sliding_window']})"),
        ("experts", f"{s['experts']} per layer, {s['experts_per_token']} per token"),
        ("sizes", f"hidden {s['hidden_size']}, intermediate {s['intermediate_size']}, "
                  f"vocabulary {s['vocab_size']}"),
        ("attention", f"{s['attention_heads']} query heads, {s['kv_heads']} key/value heads "
                      f"of {s['head_dim']}"),
        ("max context", f"{s['max_context']}"),
        ("parameters", f"{_count(s['parameters'])} total ({_count(s['expert_parameters'])} "
                       f"in MXFP4 experts), {_count(s['active_parameters'])} active per token"),
        ("on disk", _gb(s["bytes_on_disk"])),
        ("memory", f"{_gb(s['memory_bytes'])} = weights {_gb(s['weight_bytes'])} "
                   f"({s['dtype']}) + KV cache {_gb(s['kv_cache_bytes'])} "
                   f"({s['context']} tokens)"),
        ("KV cache", "per token " + ", ".join(
            f"{name} {v['bytes_per_token'] / 1024:.1f} KiB ({_gb(v['bytes'])} at "
            f"{s['context']})" for name, v in s["kv_cache"].items())),
    ]
    # Issue 20: the longest prompt each cache type fits in this process's memory, next to the
    # weights (memory.largest_context).
    rows.append(("fits here", ", ".join(f"{name} {v['largest_context']:,} tokens"
                                        for name, v in s["kv_cache"].items())
                 + f" ({_gb(s['memory_limit'])} {s['memory_limit_bound']} less the weights)"))
    if s["weight_bytes_in_place"]:
        rows.append(("in place", f"{_gb(s['weight_bytes_in_place'])} of the weights used from "
                                 "the checkpoint's files (page cache, shared between processes)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        typer.echo(f"{label:<{width}}  {value}")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return str(n)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


if __name__ == "__main__":
    main()
