"""`openharmony generate`: one completion of a prompt, raw text or one harmony chat turn."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .options import TurnFlags, one_of, with_flags
from .output import chat_turn, print_stats, write


@app.command()
@with_flags(TurnFlags)
def generate(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(
        metavar="PROMPT", show_default=False,
        help="The prompt: raw text, or the user message with --chat. '-' or none: stdin.")
    ] = None,
    prompt_option: Annotated[Optional[str], typer.Option(
        "--prompt", "-p", help="The prompt, as an option (instead of PROMPT).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Send the prompt as a harmony user "
                                                      "message and print the final answer.")
                    ] = False,
    json_schema: Annotated[Optional[Path], typer.Option(
        "--json-schema", metavar="FILE", help="Hold the output to this JSON Schema: the final "
        "answer with --chat (the reasoning stays free), else the whole completion.")] = None,
    flags: TurnFlags = None,
) -> None:
    """Stream a completion of PROMPT to stdout."""
    from ..cache import PromptCache
    from ..generate import stream_generate

    schema = read_json_schema(json_schema) if json_schema is not None else None
    session = ctx.obj
    prompt = one_of("PROMPT", prompt, "--prompt", prompt_option)
    group = session.group()
    if group is None or group.rank() == 0:  # under mlx.launch only rank 0 reads stdin
        prompt = read_prompt(prompt)
    if group is not None:
        from ..parallel import broadcast_text

        prompt = broadcast_text(prompt, group)
    tokenizer, loaded = session.load(flags.model, flags.dtype, flags.precision)
    if chat:
        from ..chat import Chat

        conversation = Chat(tokenizer, flags.chat_options())
        conversation.add_user(prompt)
        response_format = None if schema is None else {
            "type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
        stats = chat_turn(loaded, tokenizer, conversation, flags,
                          PromptCache(loaded, kv_bits=flags.kv_bits), response_format)
    else:
        stats = None
        for chunk in stream_generate(loaded, prompt, tokenizer=tokenizer,
                                     sampling=flags.sampling(), max_tokens=flags.max_tokens,
                                     seed=flags.seed, kv_bits=flags.kv_bits,
                                     json_schema=schema):
            write(chunk.text)
            stats = chunk.stats or stats
        write("\n")
    if flags.verbose and stats is not None:
        print_stats(stats)


def read_prompt(prompt: str | None) -> str:
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


def read_json_schema(path: Path) -> dict:
    """--json-schema FILE: a JSON Schema object (checked further when it is compiled)."""
    try:
        schema = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise typer.BadParameter(f"cannot read a JSON Schema from {path}: {error}",
                                 param_hint="'--json-schema'") from None
    if not isinstance(schema, dict):
        raise typer.BadParameter(f"{path} holds a JSON {type(schema).__name__}, not a schema "
                                 "object", param_hint="'--json-schema'")
    return schema
