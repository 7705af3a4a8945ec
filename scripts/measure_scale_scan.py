#!/usr/bin/env python
"""What the loader's NaN-scale scan costs next to reading the scales it scans.

    flock /tmp/openharmony-bench.lock scripts/measure_scale_scan.py /work/ckpt/gpt-oss-20b-random

For every MXFP4 scales tensor of the checkpoint: the seconds to read it (evaluating the lazy
array from `mx.load`, page cache as it is) and the seconds of the scan `Checkpoint.get` adds
(`mx.max(scales)`, read back: 255 is the largest byte, so the maximum is 255 exactly when one is),
summed, with their ratio; and, for comparison, the same scan written as `mx.any(scales == 255)`.
One JSON line. Holds one scales tensor at a time (12 MB for gpt-oss-20b).
"""

from __future__ import annotations

import json
import sys
import time

import mlx.core as mx

from openharmony.weights import open_checkpoint
from openharmony.mxfp4 import SCALE_NAN


def main(path: str) -> None:
    checkpoint = open_checkpoint(path)
    read_seconds = scan_seconds = compare_seconds = 0.0
    total_bytes = 0
    count = 0
    for name in checkpoint.names():
        if not name.endswith(".scales"):
            continue
        tensor = checkpoint._source(name)[0]
        # Unscanned and lazy; taken out of the checkpoint so that it is freed after use.
        raw = checkpoint._file_arrays(tensor.file).pop(tensor.name)
        start = time.perf_counter()
        mx.eval(raw)
        read_seconds += time.perf_counter() - start
        start = time.perf_counter()
        found = mx.max(raw).item() == SCALE_NAN
        scan_seconds += time.perf_counter() - start
        start = time.perf_counter()
        assert mx.any(raw == SCALE_NAN).item() == found
        compare_seconds += time.perf_counter() - start
        assert not found, name
        total_bytes += raw.nbytes
        count += 1
        del raw
    print(json.dumps({"scales_tensors": count, "scales_bytes": total_bytes,
                      "read_seconds": round(read_seconds, 3),
                      "scan_seconds": round(scan_seconds, 3),
                      "scan_over_read": round(scan_seconds / read_seconds, 3),
                      "any_equal_seconds": round(compare_seconds, 3)}))


if __name__ == "__main__":
    main(sys.argv[1])
