"""The typer app: the global options, and errors as one line with an exit code."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from ..errors import OpenHarmonyError
from .session import Session

EXIT_ERROR = 1  # typer's own usage errors exit with 2
EXIT_INTERRUPTED = 130


class OneLineErrors(TyperGroup):
    """Turns user errors into one line on stderr instead of a traceback or a usage box. Each
    run gets its own `Session` (the context's `obj`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        session = extra.setdefault("obj", Session())
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # typer's bad flags and arguments
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            return self._fail(session, e.format_message() + hint, e.exit_code, standalone_mode)
        except (typer.Abort, KeyboardInterrupt):
            return self._fail(session, "interrupted", EXIT_INTERRUPTED, standalone_mode)
        except OpenHarmonyError as e:
            if session.debug:
                raise
            return self._fail(session, str(e), EXIT_ERROR, standalone_mode)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    @staticmethod
    def _fail(session: Session, message: str, code: int, standalone_mode: bool):
        if session.rank:  # the other ranks print their errors only (Session.load)
            sys.stderr = sys.__stderr__
            message = f"rank {session.rank}: {message}"
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
    ctx.obj.debug, ctx.obj.vocab = debug, vocab
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def main() -> None:
    """The console script `openharmony`."""
    app(prog_name="openharmony")
