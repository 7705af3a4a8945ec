"""`openharmony serve`: the OpenAI-compatible server (docs/server.md)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..download import DEFAULT_MODEL
from .app import EXIT_INTERRUPTED, app
from .options import DTypeOption, KVBits, ModelOption, PrecisionOption


@app.command()
def serve(
    ctx: typer.Context,
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
    max_request_mb: Annotated[Optional[float], typer.Option(
        min=0.001, help="The largest request body, in MB; larger ones get 413. Default: 16 "
                        "bytes per token of the model's context (2.1 MB for 131072).")] = None,
) -> None:
    """An OpenAI-compatible server: the Responses API and Chat Completions (docs/server.md).

    Ctrl-C or SIGTERM stops it cleanly (exit status 130, or by SIGTERM).
    """
    import logging

    from ..server.app import create_app
    from ..server.run import listen, serve as run_server

    session = ctx.obj
    tokenizer, loaded = session.load(model, dtype, precision)
    if kv_bits is not None:
        loaded.make_cache(kv_bits=kv_bits)  # a model that cannot take it fails now
    if session.rank:  # expert parallel: rank 0 serves, the others follow its turns
        from ..server.engine import follow

        return follow(loaded, tokenizer, int(cache_gb * 1e9), kv_bits)
    sock = listen(host, port)  # a busy port: one error line, before anything says "serving"
    model_id = model if not Path(model).expanduser().exists() else Path(model).name
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("openharmony.server").setLevel(logging.INFO)  # one line per request
    served = create_app(loaded, tokenizer, model_id, api_key=api_key, max_queue=max_queue,
                        max_cache_bytes=int(cache_gb * 1e9), kv_bits=kv_bits,
                        max_batch=max_batch, max_request_bytes=None if max_request_mb is None
                        else int(max_request_mb * 1e6))
    stopped_by = run_server(served, sock, on_ready=lambda: typer.echo(
        f"serving {model_id} on http://{host}:{port}/v1"
        + (" (API key required)" if api_key else ""), err=True))
    if stopped_by == signal.SIGINT:
        raise typer.Exit(EXIT_INTERRUPTED)
    if stopped_by is not None:  # SIGTERM: end by it, after the clean shutdown, as expected
        sys.stderr.flush()
        signal.signal(stopped_by, signal.SIG_DFL)
        signal.raise_signal(stopped_by)
