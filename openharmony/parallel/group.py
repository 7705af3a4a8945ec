"""The distributed group: joining it, bounding every wait on the other ranks, broadcasts.

MLX's collectives (`mx.distributed`, set up by `mlx.launch`) never time out: a rank that dies
is noticed at once (its sockets close and the others' next collective raises), but one that
hangs, sleeps, or whose machine drops off the network leaves the others blocked forever, and
so does joining a group whose peer never starts. So every wait on the other ranks runs under
a watchdog thread (`bounded`): past its bound the process prints one line naming the rank and
what it waited for, and exits with status 1 (`os._exit`: the main thread is blocked inside
MLX and cannot be interrupted).

Bounds, in seconds (0 turns the watchdog off):

* `OPENHARMONY_DISTRIBUTED_TIMEOUT` (default 120): one collective, i.e. one layer's experts
  of this rank plus waiting for the slowest rank to finish the same layer;
* `OPENHARMONY_DISTRIBUTED_START_TIMEOUT` (default 900): joining the group, and the barrier
  after loading (ranks load at different speeds).

Waiting for rank 0's next input line (`broadcast_text`, the interactive chat) is not bounded.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import mlx.core as mx
import numpy as np

from ..errors import DistributedError

TIMEOUT_ENV = "OPENHARMONY_DISTRIBUTED_TIMEOUT"
START_TIMEOUT_ENV = "OPENHARMONY_DISTRIBUTED_START_TIMEOUT"
DEFAULT_TIMEOUT, DEFAULT_START_TIMEOUT = 120.0, 900.0
EXIT_STATUS = 1

# How MLX's backends begin their errors ("[ring] connection to a peer was lost").
_BACKEND_ERRORS = ("[ring]", "[jaccl]", "[mpi]", "[nccl]", "[distributed]")
# Variables MLX's launchers set for each backend (ring, JACCL, NCCL, MPI).
_LAUNCHER_VARIABLES = ("MLX_HOSTFILE", "MLX_JACCL_COORDINATOR", "MLX_IBV_DEVICES",
                       "MLX_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def timeout(start: bool = False) -> float:
    """The bound on one collective (or, with `start`, on joining and loading), in seconds."""
    if start:
        name, default = START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT
    else:
        name, default = TIMEOUT_ENV, DEFAULT_TIMEOUT
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise DistributedError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return seconds


def is_launched() -> bool:
    """Whether this process was started by `mlx.launch` (or mpirun) as one rank of several."""
    return any(os.environ.get(name) for name in _LAUNCHER_VARIABLES)


def init_group(backend: str = "any") -> mx.distributed.Group | None:
    """The group this process was launched into, or None when it runs alone.

    Joining waits for every rank to start; it is bounded by the start timeout.
    """
    if not is_launched():
        return None
    with bounded("joining the distributed group", timeout(start=True), _env_rank(),
                 START_TIMEOUT_ENV):
        try:
            group = mx.distributed.init(strict=True, backend=backend)
        except RuntimeError as e:
            raise DistributedError(f"cannot join the distributed group ({backend} backend): "
                                   f"{e}") from None
    return group if group.size() > 1 else None


def _env_rank() -> str:
    return os.environ.get("MLX_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "?"


class _Watchdog:
    """One thread per process; `bounded` arms it for the duration of one wait."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._deadline: float | None = None
        self._message = ""
        self._thread: threading.Thread | None = None

    @contextmanager
    def bounded(self, message: str, seconds: float) -> Iterator[None]:
        if seconds <= 0:
            yield
            return
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="openharmony-watchdog",
                                                daemon=True)
                self._thread.start()
            outer = self._deadline, self._message
            self._deadline = time.monotonic() + seconds
            self._message = message
            self._condition.notify()
        try:
            yield
        finally:
            with self._condition:
                self._deadline, self._message = outer
                self._condition.notify()

    def _run(self) -> None:
        with self._condition:
            while True:
                if self._deadline is None:
                    self._condition.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                os.write(2, ("error: " + self._message + "\n").encode())
                os._exit(EXIT_STATUS)


_watchdog = _Watchdog()


@contextmanager
def bounded(what: str, seconds: float, rank: int | str, setting: str = TIMEOUT_ENV
            ) -> Iterator[None]:
    """Exit the process with one line on stderr if the block takes more than `seconds`."""
    message = (f"rank {rank}: {what} did not finish within {seconds:g} s: another rank died, "
               f"hangs or cannot be reached ({setting} sets this bound)")
    with _watchdog.bounded(message, seconds):
        yield


def evaluate(arrays, group: mx.distributed.Group, what: str, *, start: bool = False,
             seconds: float | None = None) -> None:
    """`mx.eval(arrays)`, whose graph holds collectives on `group`, under the watchdog
    (`seconds`, default: the collective bound, or the start bound with `start`).

    A peer that is gone (MLX: "connection to a peer was lost") becomes a `DistributedError`.
    """
    if seconds is None:
        seconds = timeout(start)
    with bounded(what, seconds, group.rank(), START_TIMEOUT_ENV if start else TIMEOUT_ENV):
        try:
            mx.eval(arrays)
        except RuntimeError as e:
            if not str(e).startswith(_BACKEND_ERRORS):
                raise  # not the transport's (out of memory, a bug): as it is
            raise DistributedError(f"rank {group.rank()}: {what} failed: {e} (another rank "
                                   "exited or its connection broke)") from None


def broadcast_from_rank0(x: mx.array, group: mx.distributed.Group, what: str,
                         seconds: float | None = None) -> mx.array:
    """Rank 0's `x` on every rank, evaluated: an `all_sum` to which the others add zeros."""
    mine = x if group.rank() == 0 else mx.zeros_like(x)
    y = mx.distributed.all_sum(mine, group=group)
    evaluate(y, group, what, seconds=seconds)
    return y


def broadcast_text(text: str | None, group: mx.distributed.Group) -> str | None:
    """Rank 0's `text` (or None) on every rank; the others' argument is ignored. The wait for
    it is not bounded: rank 0 may be waiting for a person to type."""
    data = np.frombuffer((text or "").encode(), np.uint8)
    length = broadcast_from_rank0(mx.array([-1 if text is None else data.size], mx.int32),
                                  group, "waiting for rank 0's input", seconds=0).item()
    if length <= 0:
        return None if length < 0 else ""
    if group.rank() != 0:
        data = np.zeros(length, np.uint8)
    received = broadcast_from_rank0(mx.array(data), group, "receiving rank 0's input")
    return bytes(np.array(received)).decode()
