"""`load_model` with the weights used in place from the checkpoint's mapping (openharmony/load.py).

With the native CPU kernels the experts, the embedding, the attention projections and the
lm_head are the checkpoint's own bytes: each such tensor's address is its offset in its file's
mapping (checked against the safetensors headers parsed here and the bytes the `safetensors`
library reads), loading them adds no private memory, the files are never written, and a
model keeps its mappings exactly as long as it (or anything computed from it) lives. The
logits of these models match transformers' in tests/test_model.py (its native cases).
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from openharmony import native, runtime
from openharmony.errors import CheckpointError
from openharmony.load import load_model
from openharmony.testing.random_checkpoint import write_random_checkpoint

pytestmark = pytest.mark.skipif(not native.available,
                                reason=f"native kernels unavailable: {native.unavailable_reason}")


def load_file(file: Path) -> dict[str, np.ndarray]:
    """The stored tensors as the `safetensors` library reads them (through torch, which has
    bfloat16), each as an array of its own bytes' width (bf16 as uint16)."""
    import torch
    from safetensors.torch import load_file as load

    return {name: (t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16
                   else t.numpy()) for name, t in load(file).items()}


def header_offsets(file: Path) -> dict[str, tuple[int, int]]:
    """Stored name -> (first byte, end) in the file, from the safetensors header itself."""
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    return {name: (8 + length + entry["data_offsets"][0], 8 + length + entry["data_offsets"][1])
            for name, entry in header.items() if name != "__metadata__"}


def locate(folder: Path, stored_name: str) -> tuple[Path, int, int]:
    for file in sorted(folder.rglob("*.safetensors")):
        offsets = header_offsets(file)
        if stored_name in offsets:
            return file, *offsets[stored_name]
    raise KeyError(stored_name)


def module_tensor(model, name: str):
    *path, key = name.split(".")
    module = model
    for part in path:
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return getattr(module, key)


# engine attribute -> (stored name, leading rows of the stored tensor or None), by layout
HF_TENSORS = {
    "embed_tokens.weight": ("model.embed_tokens.weight", None),
    "lm_head.weight": ("lm_head.weight", None),
    "layers.1.self_attn.k_proj.weight": ("model.layers.1.self_attn.k_proj.weight", None),
    "layers.0.self_attn.o_proj.weight": ("model.layers.0.self_attn.o_proj.weight", None),
    "layers.1.mlp.experts.gate_up_proj.weight": (
        "model.layers.1.mlp.experts.gate_up_proj_blocks", None),
    "layers.0.mlp.experts.down_proj.scales": ("model.layers.0.mlp.experts.down_proj_scales",
                                              None),
}


def original_tensors(config) -> dict:
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    return {
        "embed_tokens.weight": ("embedding.weight", None),
        "lm_head.weight": ("unembedding.weight", None),
        "layers.1.self_attn.q_proj.weight": ("block.1.attn.qkv.weight", (0, q)),
        "layers.1.self_attn.v_proj.weight": ("block.1.attn.qkv.weight", (q + kv, q + 2 * kv)),
        "layers.0.mlp.experts.gate_up_proj.weight": ("block.0.mlp.mlp1_weight.blocks", None),
        "layers.1.mlp.experts.down_proj.scales": ("block.1.mlp.mlp2_weight.scales", None),
    }


@pytest.mark.parametrize("layout", ["hf", "sharded", "original"])
def test_in_place_weights_are_the_checkpoints_bytes(layout, tiny_checkpoint,
                                                    tiny_sharded_checkpoint,
                                                    tiny_original_checkpoint, tiny_config):
    folder = {"hf": tiny_checkpoint, "sharded": tiny_sharded_checkpoint,
              "original": tiny_original_checkpoint}[layout]
    model = load_model(folder)
    tensors = original_tensors(tiny_config) if layout == "original" else HF_TENSORS
    for name, (stored_name, rows) in tensors.items():
        tensor = module_tensor(model, name)
        assert native.is_mapped(tensor), name
        file, begin, end = locate(folder, stored_name)
        stored = load_file(file)[stored_name]
        if rows is not None:
            row_bytes = stored.nbytes // stored.shape[0]
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
            stored = stored[rows[0]:rows[1]]
        # In place: the tensor's address is its byte offset inside its file's mapping.
        assert tensor.mapping.path == str(file)
        assert tensor.address - tensor.mapping.address == begin
        assert tensor.nbytes == end - begin
        assert np.array_equal(tensor.bytes(), stored.view(np.uint8).reshape(-1)), name
    # What is not used in place is an ordinary float32 parameter.
    assert model.layers[0].input_layernorm.weight.dtype == mx.float32
    assert model.layers[0].mlp.router.weight.dtype == mx.float32
    from mlx.utils import tree_flatten
    assert not any(native.is_mapped(v) for _, v in tree_flatten(model.parameters()))


def test_a_share_of_the_experts_is_a_byte_range_of_the_mapping(tiny_checkpoint):
    from openharmony.weights import open_checkpoint

    checkpoint = open_checkpoint(tiny_checkpoint)
    name = "layers.0.mlp.experts.gate_up_proj.blocks"
    share = checkpoint.map(name, experts=range(2, 5))
    file, begin, _ = locate(tiny_checkpoint, "model.layers.0.mlp.experts.gate_up_proj_blocks")
    stored = load_file(file)["model.layers.0.mlp.experts.gate_up_proj_blocks"]
    assert share.shape == (3, *stored.shape[1:])
    assert share.address - share.mapping.address == begin + 2 * stored[0].nbytes
    assert np.array_equal(share.bytes(), stored[2:5].reshape(-1))
    with pytest.raises(ValueError, match="contiguous range"):
        checkpoint.map(name, experts=range(6, 9))


def digests(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(f): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in sorted(folder.rglob("*"))}


def mapped_paths() -> str:
    return Path("/proc/self/maps").read_text()


def test_a_model_maps_its_files_read_only_never_writes_them_and_unmaps_them_with_itself(
        tmp_path, tiny_sharded_checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_sharded_checkpoint, folder)
    before = digests(folder)
    model = load_model(folder)
    maps = [line.split() for line in mapped_paths().splitlines() if str(folder) in line]
    assert {m[-1] for m in maps} == {str(f) for f in folder.glob("*.safetensors")}
    assert all(m[1] == "r--s" for m in maps)  # read-only, shared with the page cache
    logits = model(mx.array([[1, 2, 3, 4]]))  # lazy: still needs the mappings
    del model
    gc.collect()
    assert str(folder) in mapped_paths()
    assert np.isfinite(np.array(logits)).all()
    del logits
    gc.collect()
    assert str(folder) not in mapped_paths()
    assert digests(folder) == before


def test_in_place_needs_the_native_kernels(monkeypatch, tiny_checkpoint):
    monkeypatch.setenv(runtime.ENV_VAR, "mlx")
    with pytest.raises(native.NativeKernelsError, match="in_place=True"):
        load_model(tiny_checkpoint, in_place=True)
    model = load_model(tiny_checkpoint)  # MLX's kernels: everything read, nothing mapped
    assert not native.is_mapped(model.layers[0].mlp.experts.gate_up_proj.weight)


def test_in_place_false_reads_every_weight(tiny_checkpoint):
    model = load_model(tiny_checkpoint, in_place=False)
    assert isinstance(model.layers[0].mlp.experts.gate_up_proj.weight, mx.array)
    assert isinstance(model.embed_tokens.weight, mx.array)


def test_a_nan_scale_is_refused_whether_read_or_mapped(tmp_path, tiny_checkpoint):
    folder = tmp_path / "nan"
    shutil.copytree(tiny_checkpoint, folder)
    file = folder / "model.safetensors"
    _, begin, _ = locate(folder, "model.layers.0.mlp.experts.gate_up_proj_scales")
    shape = load_file(file)["model.layers.0.mlp.experts.gate_up_proj_scales"].shape
    data = bytearray(file.read_bytes())
    data[begin + int(np.ravel_multi_index((1, 2, 0), shape))] = 255  # E8M0's NaN
    file.write_bytes(bytes(data))
    for in_place in (True, False):
        with pytest.raises(CheckpointError, match=r"gate_up_proj_scales.*\[1, 2, 0\]"):
            load_model(folder, in_place=in_place)


# A checkpoint big enough that its expert bytes (~210 MB) stand far above the process's own
# allocations while loading; 4 layers, 32 experts of 1024 x 1024.
def _big_config(tiny_config):
    return replace(tiny_config, num_hidden_layers=4, num_local_experts=32, hidden_size=1024,
                   intermediate_size=1024, layer_types=tiny_config.layer_types * 2)


MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from openharmony.load import load_model

    def anonymous():
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024

    import mlx.core as mx  # imports done before the first reading
    before = anonymous()
    model = load_model(sys.argv[1], in_place=sys.argv[2] == "in-place")
    print(json.dumps(anonymous() - before))
""")


def test_loading_in_place_adds_no_private_memory(tmp_path_factory, tiny_config):
    folder = write_random_checkpoint(tmp_path_factory.mktemp("big") / "hf",
                                     _big_config(tiny_config))
    experts = sum(t.nbytes for name, t in load_file(folder / "model.safetensors").items()
                  if ".experts." in name and name.endswith(("_blocks", "_scales")))
    assert experts > 200e6

    def grown(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", MEASURE, str(folder), mode],
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    # Read into memory, the experts are private memory; in place, none of them is.
    assert grown("read") > 0.9 * experts
    assert grown("in-place") < 0.1 * experts
