"""Reading a checkpoint's next tensors into the page cache ahead of their conversion."""

from __future__ import annotations

import os
import threading
from pathlib import Path

class ReadAhead:
    """Brings the bytes of the next groups of tensors into the page cache on a second thread.

    Reading a checkpoint is CPU work in the kernel (page-cache inserts and copies: about
    0.8 GB/s on one core here) and so is converting its tensors; MLX does both on one thread.
    While the caller evaluates group i, this thread asks the kernel for groups i+1 .. i+depth,
    so the reads overlap the conversion and MLX's own reads find the pages already cached. It
    never runs further ahead than `depth` groups, so it holds little page cache (a model that
    fills most of the memory leaves little room for it).

        with ReadAhead([[(file, offset, length), ...], ...]) as read_ahead:
            for i, group in enumerate(groups):
                read_ahead.reached(i)
                mx.eval(group)
    """

    CHUNK = 16 << 20

    def __init__(self, groups: list[list[tuple[Path, int, int]]], depth: int = 2):
        self.groups, self.depth = groups, depth
        self._reached = -1
        self._closed = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="openharmony-read-ahead",
                                        daemon=True)

    def __enter__(self) -> "ReadAhead":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()

    def reached(self, index: int) -> None:
        """The caller starts on group `index`: read up to `index + depth`."""
        with self._condition:
            self._reached = index
            self._condition.notify()

    def _run(self) -> None:
        for index, ranges in enumerate(self.groups):
            with self._condition:
                while not self._closed and index > self._reached + self.depth:
                    self._condition.wait()
                if self._closed:
                    return
            for file, offset, length in ranges:
                try:
                    _read_into_page_cache(file, offset, length, self.CHUNK)
                except OSError:
                    return  # only an optimization: MLX's own read reports real errors


def _read_into_page_cache(file: Path, offset: int, length: int, chunk: int) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        buffer = bytearray(min(chunk, length))
        view = memoryview(buffer)
        end = offset + length
        while offset < end:
            n = os.preadv(fd, [view[:min(chunk, end - offset)]], offset)
            if n <= 0:
                return
            offset += n
    finally:
        os.close(fd)
