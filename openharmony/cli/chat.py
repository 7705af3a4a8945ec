"""`openharmony chat`: an interactive, multi-turn conversation."""

from __future__ import annotations

import typer

from ..errors import DistributedError, OpenHarmonyError
from .app import app
from .options import TurnFlags, with_flags
from .output import chat_turn, print_stats

CHAT_HELP = "Type a message; /reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops an answer."


@app.command()
@with_flags(TurnFlags, max_tokens=4096)
def chat(ctx: typer.Context, flags: TurnFlags = None) -> None:
    """Chat with the model, multi-turn.

    Each turn reuses the computed prefix of the previous ones. /reset starts over, /exit (or
    Ctrl-D) quits, Ctrl-C stops an answer.
    """
    from ..cache import PromptCache
    from ..chat import Chat

    session = ctx.obj
    tokenizer, loaded = session.load(flags.model, flags.dtype, flags.precision)
    options = flags.chat_options()
    conversation = Chat(tokenizer, options)
    prompt_cache = PromptCache(loaded, kv_bits=flags.kv_bits)
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # not on every platform
        pass
    typer.echo(CHAT_HELP, err=True)
    while True:
        line = read_input(session, loaded.group)
        if line is None or line.strip() in ("/exit", "/quit"):
            break
        message = line.strip()
        if not message:
            continue
        if message == "/reset":
            conversation = Chat(tokenizer, options)
            prompt_cache = PromptCache(loaded, kv_bits=flags.kv_bits)
            typer.echo("(new conversation)", err=True)
            continue
        before_turn = list(conversation.messages)
        conversation.add_user(message)
        try:
            stats = chat_turn(loaded, tokenizer, conversation, flags, prompt_cache)
        except (KeyboardInterrupt, OpenHarmonyError) as e:
            # A stopped turn, or one that cannot run (too long for the context, an answer that
            # breaks the harmony format), is forgotten and the conversation goes on; the
            # prompt cache drops what the next prompt no longer shares. Across ranks Ctrl-C
            # cannot stop them all at the same token, and a lost rank is lost: both end it.
            if isinstance(e, DistributedError) or (
                    loaded.group is not None and isinstance(e, KeyboardInterrupt)):
                raise
            if session.debug and not isinstance(e, KeyboardInterrupt):
                raise
            conversation.messages[:] = before_turn
            reason = "stopped" if isinstance(e, KeyboardInterrupt) else "error: " + " ".join(
                str(e).split())
            typer.echo(f"\n{reason}", err=True)
            continue
        if flags.verbose and stats is not None:
            print_stats(stats)


def read_input(session, group) -> str | None:
    """The next chat line: rank 0 reads it, every rank gets it."""
    from ..parallel import broadcast_text

    line = read_line(">>> ") if session.rank == 0 else None
    return line if group is None else broadcast_text(line, group)


def read_line(prompt: str) -> str | None:
    """A line from stdin, None at end of input. Ctrl-C at the prompt just asks again."""
    while True:
        try:
            return input(prompt)
        except EOFError:
            typer.echo("")
            return None
        except KeyboardInterrupt:
            typer.echo("\n(" + CHAT_HELP + ")", err=True)
