"""Fetching checkpoints from the Hugging Face hub, and finding a model given by folder or hub id.

The gpt-oss repos hold the same weights three times (the Hugging Face layout at the top level,
OpenAI's layout under `original/` and a Metal build under `metal/`); this engine reads the
Hugging Face layout, so by default only those files are fetched (13.8 GB for gpt-oss-20b instead
of about three times that).

Everything goes through huggingface-hub, so its environment variables apply as they always do:
HF_HOME / HF_HUB_CACHE (where the cache lives), HF_ENDPOINT (a mirror), HF_TOKEN (gated or
private repos) and HF_HUB_OFFLINE (no network: use the cache only). huggingface-hub reads most
of them once, when it is imported; HF_ENDPOINT is also re-read here on every call so that a
mirror set later in the same process (tests, notebooks) is honoured.

Resuming: within a run, a dropped connection is resumed with an HTTP Range request
(huggingface-hub retries up to five times); across runs, files that were completed are kept and
only the missing ones are fetched again.

Ctrl-C: huggingface-hub downloads in worker threads and, on KeyboardInterrupt, waits for the
files in flight to finish (its thread pool joins them), which takes minutes for a shard. The
CLI therefore wraps a download in `exit_at_once_on_ctrl_c`, which ends the process at once, as
SIGTERM does.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from .errors import OpenHarmonyError

DEFAULT_MODEL = "openai/gpt-oss-20b"

# The files of the Hugging Face layout (patterns are anchored at the repo root, so
# `model*.safetensors` does not match `original/model.safetensors`).
HF_LAYOUT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model*.safetensors",
    "model.safetensors.index.json",
)
ORIGINAL_PATTERNS = ("original/*",)
METAL_PATTERNS = ("metal/*",)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DownloadError(OpenHarmonyError):
    """A model that cannot be fetched or found: unknown repo, no network, gated, interrupted."""


def looks_like_hub_id(name: str) -> bool:
    """True for `owner/name` (what the hub accepts), False for anything path-like."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def file_patterns(*, original: bool = False, metal: bool = False) -> list[str]:
    """The allow-patterns for `snapshot_download`: the HF layout, plus `original/` or `metal/`."""
    patterns = list(HF_LAYOUT_PATTERNS)
    if original:
        patterns += ORIGINAL_PATTERNS
    if metal:
        patterns += METAL_PATTERNS
    return patterns


def download_model(repo_id: str = DEFAULT_MODEL, *, revision: str | None = None,
                   cache_dir: str | Path | None = None, local_dir: str | Path | None = None,
                   original: bool = False, metal: bool = False,
                   local_files_only: bool = False) -> Path:
    """Fetch (or find in the cache) a checkpoint's files; returns the folder holding them.

    With `local_files_only` nothing is fetched: the cached snapshot is returned, or
    `DownloadError` is raised if the cache does not hold it.
    """
    if not looks_like_hub_id(repo_id):
        raise DownloadError(f"{repo_id!r} is not a hub model id (expected 'owner/name', "
                            f"e.g. {DEFAULT_MODEL})")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            allow_patterns=file_patterns(original=original, metal=metal),
            local_files_only=local_files_only,
            endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None,
        )
    except Exception as e:  # noqa: BLE001 - translated below, re-raised when not a hub error
        raise _as_download_error(e, repo_id, local_files_only) from e
    return Path(folder)


def resolve_model(model: str, *, download: bool = True) -> Path:
    """The local folder for `model`: an existing folder, else a hub id from the cache.

    A hub id that is not cached is downloaded when `download` is true (the default).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DownloadError(f"model {model} is a file; expected a checkpoint folder or a hub id")
    if not looks_like_hub_id(model):
        raise DownloadError(f"model folder not found: {model}")
    try:
        return download_model(model, local_files_only=True)
    except DownloadError:
        if not download:
            raise
    return download_model(model)


def _as_download_error(e: Exception, repo_id: str, local_files_only: bool) -> Exception:
    """One readable sentence for the hub's errors; other exceptions are returned unchanged."""
    from huggingface_hub import errors as hub

    if isinstance(e, hub.HFValidationError):
        return DownloadError(f"{repo_id!r} is not a valid hub model id: {e}")
    if isinstance(e, hub.GatedRepoError):
        return DownloadError(f"{repo_id} is gated: accept its licence on the hub and set HF_TOKEN")
    if isinstance(e, hub.RevisionNotFoundError):
        return DownloadError(f"{repo_id} has no such revision")
    if isinstance(e, hub.RepositoryNotFoundError):
        return DownloadError(f"{repo_id} was not found on the hub (or is private: set HF_TOKEN)")
    if isinstance(e, hub.IncompleteSnapshotError):
        return DownloadError(f"the cached copy of {repo_id} is incomplete and the hub cannot be "
                             "reached; run 'openharmony download' again with network access")
    if isinstance(e, hub.LocalEntryNotFoundError):
        if local_files_only:
            return DownloadError(f"{repo_id} is not in the local Hugging Face cache")
        offline = hub.OfflineModeIsEnabled
        if isinstance(e.__cause__, offline) or _offline_mode():
            return DownloadError(f"{repo_id} is not in the local Hugging Face cache and "
                                 "HF_HUB_OFFLINE is set; unset it to download")
        return DownloadError(f"cannot reach the hub to download {repo_id} and it is not cached "
                             "(check the network, or HF_ENDPOINT)")
    if isinstance(e, hub.HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        return DownloadError(f"the hub answered HTTP {status} while downloading {repo_id}; "
                             "run the same command again to resume")
    if isinstance(e, OSError) and "Consistency check failed" in str(e):
        return DownloadError(f"a file of {repo_id} arrived truncated; run the same command again "
                             "to resume")
    if _is_network_error(e):
        return DownloadError(f"the connection to the hub failed while downloading {repo_id} "
                             f"({type(e).__name__}); run the same command again to resume")
    return e


def _offline_mode() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _is_network_error(e: Exception) -> bool:
    """A transport failure of whichever HTTP client this huggingface-hub version uses."""
    kinds: list[type] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError")):
        try:
            kinds.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return isinstance(e, tuple(kinds))


@contextlib.contextmanager
def exit_at_once_on_ctrl_c(message: str, exit_code: int) -> Iterator[None]:
    """While inside, SIGINT (Ctrl-C) prints `message` on stderr, removes the partial files
    this process is writing and ends the process with `exit_code` at once.

    Files already complete have been moved into place by huggingface-hub and are kept. A
    partial file is one of its `*.incomplete` temporaries, unique to this process (no later run
    reuses it), so it is removed rather than left behind. For the CLI only: `os._exit` skips
    Python's cleanup, which is what waits for the threads. Elsewhere than the main thread (where
    signal handlers cannot be set) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        for partial in _open_partial_files():
            partial.unlink(missing_ok=True)
        os._exit(exit_code)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _open_partial_files() -> list[Path]:
    """The huggingface-hub temporaries (`*.incomplete`) this process has open, found through
    /proc/self/fd (Linux; elsewhere none are found and they stay, as after SIGTERM)."""
    found = []
    fds = Path("/proc/self/fd")
    for entry in (fds.iterdir() if fds.is_dir() else ()):
        try:
            target = os.readlink(entry)
        except OSError:  # closed meanwhile
            continue
        if target.endswith(".incomplete"):
            found.append(Path(target))
    return found
