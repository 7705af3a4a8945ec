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

    app.py       the typer app, the global options, one-line errors and exit codes
    session.py   one run's state (--debug, --vocab, the distributed rank), loading the model
    options.py   every option declared once; `with_flags` gives a command a group of them
    output.py    printing a streamed reply and statistics
    generate.py, chat.py, serve.py, download.py, info.py: one module per command

A new command is a module that decorates its function with `@app.command()` and is imported
below; a new option of generate and chat is one field of `options.TurnFlags`.

Errors caused by the user's input (every `OpenHarmonyError`, and typer's own bad-flag errors)
are printed as one line on stderr with a non-zero exit code; `--debug` shows the traceback
instead. Anything else is a bug and keeps its traceback. The loader, generation and
huggingface-hub are imported inside the commands that use them.
"""

from .app import EXIT_ERROR, EXIT_INTERRUPTED, app, main
# Registers the commands, in the order --help lists them.
from . import generate, chat, serve, download, info  # noqa: E402,F401,I001

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "app", "main"]
