"""Every option of the command line, declared once, and the groups of them that commands share.

A command takes a group as one argument: `@with_flags(TurnFlags)` adds the group's fields to
the command's own options (after them, in --help too) and calls the command with a
`TurnFlags` built from them; keyword arguments override a field's default for that command.
"""

import dataclasses
import enum
import functools
import inspect
import typing
from typing import Annotated, Optional

import typer

from ..download import DEFAULT_MODEL
from ..sampling import SamplingOptions, option_range


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
         "(random weights: against transformers on 2 layers of gpt-oss-20b's shapes top-1 "
         "agreement 0.965, mean KL 3.1e-3, like bf16 compute; against exact on all 24 layers "
         "0.617 and 0.17, errors compounding; docs/speed.md). "
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


def _kv_bits(value: Optional[int]) -> Optional[int]:
    if value is not None and value not in (4, 8):  # cache.quantized.BITS, before any loading
        raise typer.BadParameter(f"must be 4 or 8, got {value}")
    return value


KVBits = Annotated[Optional[int], typer.Option(
    "--kv-bits", callback=_kv_bits,
    help="Store the full-attention layers' keys and values quantized to 8 (or 4) bits "
         "(docs/cache.md). Default: float, as computed.")]

_DEFAULTS = SamplingOptions()


@dataclasses.dataclass
class TurnFlags:
    """What a generation takes: `generate` and `chat` have these options."""

    model: ModelOption = DEFAULT_MODEL
    max_tokens: MaxTokens = 512
    temperature: _sampling_flag("temperature", "--temperature", "--temp") = \
        _DEFAULTS.temperature
    top_p: _sampling_flag("top_p", "--top-p") = _DEFAULTS.top_p
    top_k: _sampling_flag("top_k", "--top-k") = _DEFAULTS.top_k
    min_p: _sampling_flag("min_p", "--min-p") = _DEFAULTS.min_p
    repetition_penalty: _sampling_flag("repetition_penalty", "--repetition-penalty") = \
        _DEFAULTS.repetition_penalty
    presence_penalty: _sampling_flag("presence_penalty", "--presence-penalty") = \
        _DEFAULTS.presence_penalty
    frequency_penalty: _sampling_flag("frequency_penalty", "--frequency-penalty") = \
        _DEFAULTS.frequency_penalty
    seed: Annotated[Optional[int], typer.Option(
        help="Seed of the sampler (reproducible output).")] = None
    reasoning_effort: Annotated[ReasoningEffort, typer.Option(
        help="How much the model reasons (chat).")] = ReasoningEffort.medium
    system: Annotated[Optional[str], typer.Option(
        help="Replaces the model identity line of the system message (chat).")] = None
    developer: Annotated[Optional[str], typer.Option(
        help="Developer instructions, what other APIs call the system prompt (chat).")] = None
    dtype: DTypeOption = None
    precision: PrecisionOption = None
    kv_bits: KVBits = None
    show_reasoning: Annotated[bool, typer.Option(
        "--show-reasoning", help="Show the analysis channel (chain of thought), dimmed.")] = False
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Print timing statistics to stderr at the end.")] = False

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                               min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                               presence_penalty=self.presence_penalty,
                               frequency_penalty=self.frequency_penalty)

    def chat_options(self):
        from ..chat import ChatOptions

        return ChatOptions(reasoning_effort=self.reasoning_effort.value, system=self.system,
                           developer=self.developer)


def with_flags(flags_class, name: str = "flags", **defaults):
    """Give the decorated command the options of `flags_class` (a dataclass whose fields are
    typer-annotated), passed to it as one `flags_class` argument called `name`."""
    hints = typing.get_type_hints(flags_class, include_extras=True)
    fields = dataclasses.fields(flags_class)
    unknown = set(defaults) - {f.name for f in fields}
    if unknown:
        raise TypeError(f"{flags_class.__name__} has no field {sorted(unknown)}")
    added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                               default=defaults.get(f.name, f.default), annotation=hints[f.name])
             for f in fields]

    def decorate(command):
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.name != name]

        @functools.wraps(command)
        def run(**kwargs):
            flags = flags_class(**{f.name: kwargs.pop(f.name) for f in fields})
            return command(**kwargs, **{name: flags})

        run.__signature__ = inspect.Signature(own + added)
        run.__annotations__ = {p.name: p.annotation for p in own + added}
        return run

    return decorate


def one_of(positional_name: str, positional: Optional[str], option_name: str,
           option: Optional[str], default: Optional[str] = None) -> Optional[str]:
    """The value given as an argument or as an option (not both: which one would be meant?)."""
    if positional is not None and option is not None:
        raise typer.BadParameter("both given; give one",
                                 param_hint=f"'{positional_name}' / '{option_name}'")
    return positional if positional is not None else option if option is not None else default
