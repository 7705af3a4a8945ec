"""Checkpoints on disk: finding, validating and reading them, under engine names.

    checkpoint = open_checkpoint(path)      # headers only: no tensor byte is read
    checkpoint.get(name) / .map(name)       # a lazy mx.array / a tensor used in place

checkpoint.py   discovery (HF or `original/` layout, shards, index), `open_checkpoint`
safetensors.py  the safetensors format: strict header parsing, reading byte ranges
layouts.py      the engine names, both layouts' stored names, shapes and dtypes
mapping.py      files mapped read-only and shared (tensors used in place)
readahead.py    `ReadAhead`: the next tensors' bytes into the page cache, on a second thread
"""

from .checkpoint import INDEX_FILE, SINGLE_FILE, Checkpoint, open_checkpoint
from .layouts import (DENSE_DTYPES, HF, ORIGINAL, TensorSpec, engine_shapes, engine_to_stored,
                      hf_tensor_specs, is_expert_tensor, original_tensor_specs)
from .readahead import ReadAhead
from .safetensors import SAFETENSORS_DTYPES, StoredTensor, read_safetensors_header

__all__ = ["open_checkpoint", "Checkpoint", "INDEX_FILE", "SINGLE_FILE", "HF", "ORIGINAL",
           "DENSE_DTYPES", "TensorSpec", "engine_shapes", "engine_to_stored", "hf_tensor_specs",
           "original_tensor_specs", "is_expert_tensor", "ReadAhead", "SAFETENSORS_DTYPES",
           "StoredTensor", "read_safetensors_header"]
