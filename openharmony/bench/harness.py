"""What every benchmark run needs, whatever the engine: the machine-wide lock, a cold page
cache, peak memory, prompts, the machine's read bandwidth and its CPU's name.

The page cache matters more than anything else here: an engine whose files share 24 GB with
another engine's 13.8 GB checkpoint can run at a fifth of its speed (llama.cpp's repacked
experts plus its mapped dense weights then no longer fit, and its dense pages are re-read from
disk every token). So before each run *every* engine's files are evicted (`evict`), and
`resident_bytes` (mincore) tells what of a file is still cached.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# One benchmark at a time machine-wide (two 20b models do not fit in 24 GB beside each other).
LOCK_FILE = "/tmp/openharmony-bench.lock"
# Checkpoints at least this large hold the lock while a process has them loaded.
LOCK_ABOVE_BYTES = 1 << 30
# Prompt ids are drawn below the special tokens, like ordinary text.
ORDINARY_TOKENS = 199998


@contextlib.contextmanager
def bench_lock(needed: bool = True, path: str = LOCK_FILE):
    """Exclusive use of the machine for one big model (`needed`: else nothing is taken). A
    process started under `flock LOCK_FILE ...` must not take it again (it would wait for
    itself): the benchmarks take it themselves, once, for the whole run."""
    if not needed:
        yield
        return
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path} (another benchmark holds it) ...", file=sys.stderr,
                  flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- the page cache ---------------------------------------------------------------------------


def evict(files) -> None:
    """Drop each of `files` from the page cache, so that reading it goes to the disk as after a
    reboot. Pages a running process has mapped stay: evict between runs, not during one."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be evicted
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


def resident_bytes(file) -> int:
    """Bytes of `file` in the page cache now (mincore(2) on a mapping of it, which reads
    nothing: the kernel's own account, independent of how they got there)."""
    size = os.path.getsize(file)
    if size == 0:
        return 0
    page = mmap.PAGESIZE
    fd = os.open(file, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {file} failed")
        try:
            pages = (size + page - 1) // page
            vector = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {file} failed")
            resident = sum(1 for v in vector if v & 1)
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)
    return min(resident * page, size)


# -- processes and memory ---------------------------------------------------------------------


def vm_hwm_bytes() -> int:
    """This process's peak resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_measured(command: list[str], env: dict | None = None,
                 on_stderr=None) -> tuple[str, str, int]:
    """Run `command` to its end: (stdout, stderr, peak resident bytes of the process, from
    wait4; that counts the pages a forked child shares with this process until it execs, so
    the caller must be small, as scripts/bench.py is). `on_stderr(line, seconds since start)` sees stderr as it comes. A failure raises
    with the end of stderr."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    errors: list[str] = []

    def read_stderr():
        for line in process.stderr:
            if on_stderr:
                on_stderr(line, time.perf_counter() - start)
            errors.append(line)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    out = process.stdout.read()
    reader.join()
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        killed = " (killed: out of memory?)" if code < 0 else ""
        raise RuntimeError(f"{Path(command[0]).name} failed with exit status {code}{killed}:\n"
                           + "".join(errors)[-3000:])
    return out, "".join(errors), usage.ru_maxrss * 1024


def blas_in_use() -> str:
    """"mkl" when Intel MKL serves MLX's CPU matmuls in this process (openharmony.blas), else
    "mlx" (the BLAS MLX's wheel links)."""
    return "mkl" if "libmkl_rt" in Path("/proc/self/maps").read_text() else "mlx"


def threads() -> int:
    """The threads openharmony's native pool runs (OPENHARMONY_THREADS, else the cores this
    process may use); the other engines get the same number."""
    return int(os.environ.get("OPENHARMONY_THREADS") or len(os.sched_getaffinity(0)))


# -- inputs and the machine -------------------------------------------------------------------


def prompt_ids(n: int, vocab_size: int, seed: int = 0) -> list[int]:
    """`n` random ordinary token ids (the same for every engine given the seed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, min(vocab_size, ORDINARY_TOKENS), size=n).tolist()


def read_bandwidth(nbytes: int = 1 << 30, threads_: int | None = None, tries: int = 5) -> float:
    """Best-of-`tries` bytes/s of summing a float32 buffer far larger than the caches, split
    over `threads_` threads (numpy releases the GIL in the reduction)."""
    import numpy as np

    count = threads_ or threads()
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    parts = np.array_split(buffer, count)
    best = 0.0
    for _ in range(tries):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, buffer.nbytes / (time.perf_counter() - start))
    return best


def cpu_model() -> str:
    """The CPU as `lscpu` names it: "Model name (CPU family F, model M)"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return (f"{fields.get('Model name', 'unknown')} (CPU family {fields.get('CPU family', '?')}"
            f", model {fields.get('Model', '?')})")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: was the machine quiet?"""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
