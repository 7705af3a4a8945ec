"""The o200k vocabulary for tests: `$OPENHARMONY_VOCAB`, else `../shared/vocab` beside the repo.

Tests that need it mark themselves with `requires_vocab`: without a vocabulary (and this
machine has no network to download one) they skip with a reason instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_vocab() -> Path | None:
    for candidate in (os.environ.get("OPENHARMONY_VOCAB"), REPO_ROOT.parent / "shared" / "vocab"):
        if candidate:
            path = Path(candidate)
            path = path / "o200k_base.tiktoken" if path.is_dir() else path
            if path.is_file():
                return path
    return None


VOCAB = find_vocab()
requires_vocab = pytest.mark.skipif(
    VOCAB is None, reason="no o200k_base.tiktoken: set OPENHARMONY_VOCAB or put it in "
                          "../shared/vocab/")
