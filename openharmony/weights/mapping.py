"""Checkpoint files mapped whole, read-only and shared, for tensors used in place.

A mapped tensor is the native extension's `MappedTensor` (openharmony/native), not an
`mx.array`: MLX cannot adopt memory it did not allocate, so only the native kernels read it
(openharmony/runtime/native.py). Its pages are the page cache's, shared by every process that
maps the same file.
"""

from __future__ import annotations

from pathlib import Path

from .. import native
from ..errors import CheckpointError
from .safetensors import SAFETENSORS_DTYPES, StoredTensor


class FileMappings:
    """Each file mapped once, on the first tensor asked of it."""

    def __init__(self) -> None:
        self._files: dict[Path, object] = {}  # file -> native.Mapping

    def tensor(self, stored: StoredTensor):
        """`stored` as a `MappedTensor` over its file's mapping (nothing is read now)."""
        if stored.file not in self._files:
            try:
                self._files[stored.file] = native.map_file(stored.file)
            except RuntimeError as e:
                raise CheckpointError(str(e)) from None
        return self._files[stored.file].tensor(stored.offset, list(stored.shape),
                                               SAFETENSORS_DTYPES[stored.dtype][1])
