"""`openharmony download`: a checkpoint from the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..download import DEFAULT_MODEL, download_model, exit_at_once_on_ctrl_c
from ..errors import OpenHarmonyError
from .app import EXIT_INTERRUPTED, app
from .options import one_of


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
    repo_id = one_of("REPO_ID", repo_id, "--model", model, DEFAULT_MODEL)
    if cache_dir is not None and local_dir is not None:
        raise OpenHarmonyError("--cache-dir and --local-dir exclude each other")
    with exit_at_once_on_ctrl_c("\ninterrupted: the files already complete are kept; run the "
                                "same command again to fetch the rest", EXIT_INTERRUPTED):
        folder = download_model(repo_id, revision=revision, cache_dir=cache_dir,
                                local_dir=local_dir, original=original, metal=metal)
    typer.echo(str(folder))
