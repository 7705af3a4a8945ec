"""openharmony.weights: both layouts under engine names, lazily, and one clear error for bad input.

Values are compared with what the `safetensors` library reads from the same files; the bad
checkpoints are built by editing a good tiny one byte by byte.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from openharmony.errors import CheckpointError, OpenHarmonyError
from openharmony.weights import (ReadAhead, hf_tensor_specs, open_checkpoint,
                                 original_tensor_specs, read_safetensors_header, readahead)
from openharmony.testing.random_checkpoint import PRESETS, write_random_checkpoint


def engine_names(num_layers: int) -> list[str]:
    """The engine names as docs/architecture.md lists them."""
    layer = ["input_layernorm.weight"]
    layer += [f"self_attn.{p}_proj.{k}" for p in "qkvo" for k in ("weight", "bias")]
    layer += ["self_attn.sinks", "post_attention_layernorm.weight", "mlp.router.weight",
              "mlp.router.bias"]
    layer += [f"mlp.experts.{p}.{k}" for p in ("gate_up_proj", "down_proj")
              for k in ("blocks", "scales", "bias")]
    names = ["embed_tokens.weight", "norm.weight", "lm_head.weight"]
    return names + [f"layers.{n}.{x}" for n in range(num_layers) for x in layer]


def stored(file: Path, name: str) -> np.ndarray:
    with safe_open(file, "pt") as f:
        t = f.get_tensor(name)
    return (t.float() if t.is_floating_point() else t).numpy()


def as_numpy(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)


# -- reading ------------------------------------------------------------------------------

def test_hf_layout_gives_the_stored_tensors_under_engine_names(tiny_checkpoint, tiny_config):
    ckpt = open_checkpoint(tiny_checkpoint)
    assert ckpt.layout == "hf" and ckpt.config == tiny_config
    assert sorted(ckpt.names()) == sorted(engine_names(tiny_config.num_hidden_layers))
    file = tiny_checkpoint / "model.safetensors"
    hf = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
          "lm_head.weight": "lm_head.weight",
          "layers.1.self_attn.k_proj.bias": "model.layers.1.self_attn.k_proj.bias",
          "layers.0.mlp.experts.down_proj.scales": "model.layers.0.mlp.experts.down_proj_scales",
          "layers.1.mlp.experts.gate_up_proj.blocks":
              "model.layers.1.mlp.experts.gate_up_proj_blocks"}
    for engine, name in hf.items():
        np.testing.assert_array_equal(as_numpy(ckpt.get(engine)), stored(file, name))
    assert ckpt.total_bytes == file.stat().st_size
    with safe_open(file, "pt") as f:
        t = f.get_tensor("model.layers.0.mlp.experts.gate_up_proj_blocks")
    assert ckpt.nbytes("layers.0.mlp.experts.gate_up_proj.blocks") == t.numel()
    assert ckpt.shape("layers.0.mlp.experts.gate_up_proj.blocks") == tuple(t.shape)


def test_dtypes_are_kept_unless_asked_and_mxfp4_is_never_cast(tiny_checkpoint):
    ckpt = open_checkpoint(tiny_checkpoint)
    assert ckpt.get("norm.weight").dtype == mx.bfloat16 == ckpt.dtype("norm.weight")
    assert ckpt.get("norm.weight", mx.float32).dtype == mx.float32
    assert ckpt.get("norm.weight", "float16").dtype == mx.float16
    for name in ("layers.0.mlp.experts.down_proj.blocks", "layers.0.mlp.experts.down_proj.scales"):
        assert ckpt.get(name, mx.float32).dtype == mx.uint8 == ckpt.dtype(name)
    weights = ckpt.weights(mx.float32)
    assert weights.keys() == set(ckpt.names())
    assert weights["layers.1.mlp.experts.gate_up_proj.bias"].dtype == mx.float32
    assert weights["layers.1.mlp.experts.gate_up_proj.scales"].dtype == mx.uint8


def test_sharded_and_original_layouts_give_the_same_tensors(
        tiny_checkpoint, tiny_sharded_checkpoint, tiny_original_checkpoint):
    single = open_checkpoint(tiny_checkpoint)
    sharded = open_checkpoint(tiny_sharded_checkpoint)
    original = open_checkpoint(tiny_original_checkpoint)
    assert len(sharded.files) == 3 and sharded.layout == "hf"
    assert original.layout == "original"
    # OpenAI's config has no pad_token_id: it reads back gpt-oss's default.
    assert replace(original.config, pad_token_id=None) == single.config
    assert open_checkpoint(tiny_original_checkpoint / "original").layout == "original"
    for ckpt in (sharded, original):
        assert ckpt.names() == single.names()
        for name in single.names():
            assert ckpt.shape(name) == single.shape(name)
            assert mx.array_equal(ckpt.get(name), single.get(name)).item(), name


def test_original_qkv_is_split_into_q_k_v_rows(tiny_original_checkpoint, tiny_config):
    ckpt = open_checkpoint(tiny_original_checkpoint)
    qkv = stored(tiny_original_checkpoint / "original" / "model.safetensors",
                 "block.1.attn.qkv.weight")
    q_rows = tiny_config.num_attention_heads * tiny_config.head_dim
    kv_rows = tiny_config.num_key_value_heads * tiny_config.head_dim
    parts = [as_numpy(ckpt.get(f"layers.1.self_attn.{x}_proj.weight")) for x in "qkv"]
    assert [p.shape[0] for p in parts] == [q_rows, kv_rows, kv_rows]
    np.testing.assert_array_equal(np.concatenate(parts), qkv)
    assert ckpt.stored_name("layers.1.self_attn.v_proj.weight") == "block.1.attn.qkv.weight"


def test_a_folder_with_both_layouts_opens_the_hf_one(tmp_path, tiny_config):
    write_random_checkpoint(tmp_path, tiny_config, layout="both")
    assert open_checkpoint(tmp_path).layout == "hf"
    assert open_checkpoint(tmp_path / "original").layout == "original"


def test_a_folder_of_symlinks_opens_like_the_hub_cache(tmp_path, tiny_sharded_checkpoint):
    """huggingface_hub snapshots are folders of symlinks into a blob store."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for file in tiny_sharded_checkpoint.iterdir():
        (snapshot / file.name).symlink_to(file)
    ckpt = open_checkpoint(snapshot)
    assert ckpt.total_bytes == sum(f.stat().st_size
                                   for f in tiny_sharded_checkpoint.glob("*.safetensors"))
    reference = open_checkpoint(tiny_sharded_checkpoint)
    assert mx.array_equal(ckpt.get("lm_head.weight"), reference.get("lm_head.weight")).item()


def test_byte_counts(tiny_checkpoint, tiny_config):
    ckpt = open_checkpoint(tiny_checkpoint)
    with safe_open(tiny_checkpoint / "model.safetensors", "pt") as f:
        total = sum(f.get_tensor(n).numel() * f.get_tensor(n).element_size() for n in f.keys())
    assert ckpt.tensor_bytes == total == sum(ckpt.nbytes(n) for n in ckpt.names())
    assert total < ckpt.total_bytes < total + 16_000  # plus the header
    assert ckpt.nbytes("embed_tokens.weight") == tiny_config.vocab_size * 64 * 2


def test_opening_reads_no_tensor_bytes(tmp_path, tiny_checkpoint):
    """Bytes are read at evaluation: overwrite a tensor after opening, see the new bytes."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    file = folder / "model.safetensors"
    ckpt = open_checkpoint(folder)
    norm = ckpt.get("norm.weight", mx.float32)
    (header_len,) = struct.unpack("<Q", file.read_bytes()[:8])
    begin, end = json.loads(file.read_bytes()[8:8 + header_len])["model.norm.weight"][
        "data_offsets"]
    with open(file, "r+b") as f:  # in place: bf16 0x3F80 is 1.0
        f.seek(8 + header_len + begin)
        f.write(b"\x80\x3f" * ((end - begin) // 2))
    np.testing.assert_array_equal(np.array(norm), np.ones(ckpt.shape("norm.weight")))


def test_specs_list_every_stored_tensor(tiny_checkpoint, tiny_original_checkpoint, tiny_config):
    for folder, specs in ((tiny_checkpoint, hf_tensor_specs(tiny_config)),
                          (tiny_original_checkpoint / "original",
                           original_tensor_specs(tiny_config))):
        with safe_open(folder / "model.safetensors", "pt") as f:
            found = {n: (tuple(f.get_slice(n).get_shape()), f.get_slice(n).get_dtype())
                     for n in f.keys()}
        assert found == {n: (s.shape, s.dtype) for n, s in specs.items()}


def test_20b_specs_have_the_hub_shapes():
    specs = hf_tensor_specs(PRESETS["20b"])
    assert len(specs) == 459  # openai/gpt-oss-20b holds 459 tensors
    assert specs["model.layers.23.mlp.experts.gate_up_proj_blocks"].shape == (32, 5760, 90, 16)
    assert specs["model.layers.0.mlp.experts.down_proj_scales"].shape == (32, 2880, 90)
    assert specs["model.layers.0.self_attn.q_proj.weight"].shape == (4096, 2880)
    assert specs["model.embed_tokens.weight"].shape == (201088, 2880)
    assert original_tensor_specs(PRESETS["20b"])["block.0.attn.qkv.weight"].shape == (5120, 2880)


# -- bad input ----------------------------------------------------------------------------

def read_entries(file: Path) -> dict[str, list]:
    """name -> [dtype, shape, bytes], read without the project's code."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    return {k: [v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]]
            for k, v in header.items()}


def write_entries(file: Path, entries: dict[str, list]) -> None:
    header, offset = {}, 0
    for name, (dtype, shape, data) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(e[2] for e in entries.values()))


@pytest.fixture
def good(tmp_path, tiny_checkpoint) -> Path:
    folder = tmp_path / "good"
    shutil.copytree(tiny_checkpoint, folder)
    return folder


@pytest.fixture
def sharded(tmp_path, tiny_sharded_checkpoint) -> Path:
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_sharded_checkpoint, folder)
    return folder


def fails(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, OpenHarmonyError)
    return message


def test_missing_folder_config_or_weights(tmp_path, good):
    fails(tmp_path / "nowhere", "not found", "nowhere")
    (good / "config.json").unlink()
    fails(good, "no config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(PRESETS["tiny"].to_hf_dict()))
    fails(empty, "no .safetensors")
    fails(empty / "config.json", "not a folder")


def test_bad_config(good):
    (good / "config.json").write_text("{not json")
    fails(good, "config.json", "not valid JSON")
    (good / "config.json").write_text(json.dumps({**PRESETS["tiny"].to_hf_dict(),
                                                  "model_type": "llama"}))
    fails(good, "model_type")


def test_missing_shard_with_and_without_index(sharded):
    (sharded / "model-00002-of-00003.safetensors").unlink()
    fails(sharded, "model-00002-of-00003.safetensors", "missing")
    (sharded / "model.safetensors.index.json").unlink()
    fails(sharded, "shard model-00002-of-00003.safetensors is missing")


def test_zero_based_shards_without_index(tmp_path, sharded):
    # openai/gpt-oss-20b names its shards model-00000-of-00002 .. model-00002-of-00002.
    (sharded / "model.safetensors.index.json").unlink()
    for i in (1, 2, 3):
        (sharded / f"model-0000{i}-of-00003.safetensors").rename(
            sharded / f"model-0000{i - 1}-of-00002.safetensors")
    assert len(open_checkpoint(sharded).files) == 3
    (sharded / "model-00001-of-00002.safetensors").unlink()
    fails(sharded, "shard model-00001-of-00002.safetensors is missing")


def test_index_naming_a_missing_file_or_the_wrong_file(sharded):
    index_file = sharded / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    wrong = json.loads(index_file.read_text())
    wrong["weight_map"]["lm_head.weight"] = "model-00009-of-00003.safetensors"
    index_file.write_text(json.dumps(wrong))
    fails(sharded, "model-00009-of-00003.safetensors", "lm_head.weight", "missing")

    holder = index["weight_map"]["lm_head.weight"]
    other = next(f for f in set(index["weight_map"].values()) if f != holder)
    wrong = json.loads(json.dumps(index))
    wrong["weight_map"]["lm_head.weight"] = other
    index_file.write_text(json.dumps(wrong))
    fails(sharded, "lm_head.weight", other, holder)

    unlisted = json.loads(json.dumps(index))
    del unlisted["weight_map"]["lm_head.weight"]
    index_file.write_text(json.dumps(unlisted))
    fails(sharded, "does not list tensor 'lm_head.weight'", holder)

    index_file.write_text(json.dumps({"weight_map": {}}))
    fails(sharded, "weight_map")


def test_truncated_file(good):
    file = good / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    fails(good, "model.safetensors", "truncated", "lm_head.weight")
    file.write_bytes(file.read_bytes()[:5])
    fails(good, "model.safetensors", "only 5 bytes")


def test_corrupt_header_length_and_json(good):
    file = good / "model.safetensors"
    raw = file.read_bytes()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    fails(good, "model.safetensors", "length")
    file.write_bytes(struct.pack("<Q", 2**63) + raw[8:])
    fails(good, "model.safetensors", "length")
    (n,) = struct.unpack("<Q", raw[:8])
    file.write_bytes(raw[:8] + b"[" + raw[9:])  # the header's opening brace
    fails(good, "model.safetensors", "not valid JSON")
    file.write_bytes(raw[:8] + b"\xff" + raw[9:])
    fails(good, "model.safetensors", "not valid JSON")
    file.write_bytes(struct.pack("<Q", n - 10) + raw[8:])  # JSON cut short
    fails(good, "model.safetensors", "not valid JSON")


def edit_header(file: Path, edit) -> None:
    """Rewrite the JSON header (same data bytes after it)."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_overlapping_out_of_range_and_inconsistent_offsets(good):
    file = good / "model.safetensors"
    raw = file.read_bytes()
    norm = "model.norm.weight"

    def shift(amount):
        def edit(h):
            b, e = h[norm]["data_offsets"]
            h[norm]["data_offsets"] = [b + amount, e + amount]
        return edit

    edit_header(file, shift(-2))
    fails(good, "model.safetensors", norm, "overlaps")
    file.write_bytes(raw)
    edit_header(file, shift(2))
    fails(good, "model.safetensors", norm, "leaves a gap")

    def beyond(h):
        end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
        h["model.extra"] = {"dtype": "U8", "shape": [4], "data_offsets": [end, end + 4]}
    file.write_bytes(raw)
    edit_header(file, beyond)
    fails(good, "model.safetensors", "truncated", "model.extra")

    def wrong_size(h):
        h[norm]["shape"] = [h[norm]["shape"][0] * 2]
    file.write_bytes(raw)
    edit_header(file, wrong_size)
    fails(good, "model.safetensors", norm, "spans")

    def negative(h):
        h[norm]["data_offsets"] = [-2, 126]
    file.write_bytes(raw)
    edit_header(file, negative)
    fails(good, "model.safetensors", norm, "data_offsets")

    def unknown_dtype(h):
        h[norm]["dtype"] = "Q4_K"
    file.write_bytes(raw)
    edit_header(file, unknown_dtype)
    fails(good, "model.safetensors", norm, "unknown dtype 'Q4_K'")


def test_a_tensor_named_twice_in_a_header(good):
    file = good / "model.safetensors"
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].replace(b'"model.layers.0.self_attn.sinks"',
                                  b'"model.layers.1.self_attn.sinks"')
    file.write_bytes(raw[:8] + header + raw[8 + n:])
    fails(good, "model.safetensors", "'model.layers.1.self_attn.sinks' appears twice")


def test_trailing_bytes(good):
    file = good / "model.safetensors"
    file.write_bytes(file.read_bytes() + b"\0" * 16)
    fails(good, "model.safetensors", "16 bytes after its last tensor")


def test_shape_or_dtype_that_does_not_fit_the_config(good):
    file = good / "model.safetensors"
    raw = file.read_bytes()
    name = "model.layers.0.self_attn.o_proj.weight"  # [64, 96]: transposed, same bytes

    def transpose(h):
        h[name]["shape"] = h[name]["shape"][::-1]
    edit_header(file, transpose)
    fails(good, "model.safetensors", name, "shape [96, 64]", "needs [64, 96]")

    blocks = "model.layers.1.mlp.experts.down_proj_blocks"

    def signed_blocks(h):
        h[blocks]["dtype"] = "I8"
    file.write_bytes(raw)
    edit_header(file, signed_blocks)
    fails(good, "model.safetensors", blocks, "dtype I8")

    def integer_weights(h):
        h[name]["dtype"] = "I16"
    file.write_bytes(raw)
    edit_header(file, integer_weights)
    fails(good, "model.safetensors", name, "dtype I16")

    # A config that does not fit the weights.
    file.write_bytes(raw)
    config = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**config, "num_local_experts": 4}))
    fails(good, "model.safetensors", "shape")


def test_dense_tensors_may_be_stored_in_float32(good):
    file = good / "model.safetensors"
    entries = read_entries(file)
    dtype, shape, data = entries["model.norm.weight"]
    as_f32 = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
    entries["model.norm.weight"] = ["F32", shape, as_f32.tobytes()]
    write_entries(file, entries)
    ckpt = open_checkpoint(good)
    assert ckpt.dtype("norm.weight") == mx.float32
    np.testing.assert_array_equal(np.array(ckpt.get("norm.weight")), as_f32)


def test_missing_and_unexpected_tensors(good):
    file = good / "model.safetensors"
    entries = read_entries(file)
    without = dict(entries)
    del without["model.layers.1.self_attn.sinks"]
    write_entries(file, without)
    fails(good, "model.layers.1.self_attn.sinks", "missing", str(good))

    extra = {**entries, "model.layers.2.self_attn.sinks": ["BF16", [6], b"\0" * 12]}
    write_entries(file, extra)
    fails(good, "model.safetensors", "unexpected tensor 'model.layers.2.self_attn.sinks'")


def test_original_layout_errors_name_original_names(tmp_path, tiny_original_checkpoint):
    folder = tmp_path / "orig"
    shutil.copytree(tiny_original_checkpoint, folder)
    file = folder / "original" / "model.safetensors"
    entries = read_entries(file)
    entries["block.0.attn.qkv.weight"][1] = [64, 160]  # transposed: 96 + 32 + 32 rows of 64
    write_entries(file, entries)
    fails(folder, "original/model.safetensors", "block.0.attn.qkv.weight", "needs [160, 64]")


def test_header_parser_accepts_what_the_safetensors_library_reads(tiny_sharded_checkpoint):
    for file in tiny_sharded_checkpoint.glob("*.safetensors"):
        parsed = read_safetensors_header(file)
        with safe_open(file, "pt") as f:
            assert set(parsed) == set(f.keys())
            for name, tensor in parsed.items():
                assert list(tensor.shape) == f.get_slice(name).get_shape()
                assert tensor.dtype == f.get_slice(name).get_dtype()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_header_corruption_is_an_error_or_harmless(tmp_path_factory, tiny_checkpoint,
                                                          data):
    """A corrupted header byte or a truncation anywhere: a CheckpointError, or (for a harmless
    byte such as whitespace) a checkpoint that loads the right values."""
    raw = (tiny_checkpoint / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    corrupted = bytearray(raw)
    if data.draw(st.booleans(), label="truncate"):
        del corrupted[data.draw(st.integers(0, len(raw) - 1), label="length"):]
    else:
        corrupted[data.draw(st.integers(0, 8 + n - 1), label="position")] = data.draw(
            st.integers(0, 255), label="value")
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(tiny_checkpoint / "config.json", folder)
    (folder / "model.safetensors").write_bytes(bytes(corrupted))
    try:
        ckpt = open_checkpoint(folder)
    except CheckpointError:
        return
    reference = open_checkpoint(tiny_checkpoint)
    for name in reference.names():
        assert mx.array_equal(ckpt.get(name), reference.get(name)).item(), name


# -- read-ahead ------------------------------------------------------------------------------


def test_read_ahead_reads_each_group_once_and_never_more_than_depth_ahead(monkeypatch):
    import threading
    import time

    read, lock = [], threading.Lock()

    def record(file, offset, length, chunk):
        with lock:
            read.append((file, offset, length))

    def read_so_far(expected: int) -> list:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(read) >= expected:
                    break
            time.sleep(0.01)
        time.sleep(0.05)  # give an over-eager thread the chance to read more
        with lock:
            return list(read)

    monkeypatch.setattr(readahead, "_read_into_page_cache", record)
    groups = [[(Path(f"f{i}"), 100 * i, 10), (Path(f"f{i}"), 100 * i + 10, 5)] for i in range(6)]
    with ReadAhead(groups, depth=2) as read_ahead:
        read_ahead.reached(0)  # groups 0, 1, 2 may be read, not 3
        assert read_so_far(6) == [r for g in groups[:3] for r in g]
        read_ahead.reached(3)
        assert read_so_far(12) == [r for g in groups for r in g]


def test_byte_range_is_the_tensor_and_read_ahead_stops_on_exit(tiny_checkpoint):
    ckpt = open_checkpoint(tiny_checkpoint)
    file, offset, length = ckpt.byte_range("lm_head.weight")
    with open(file, "rb") as f:
        f.seek(offset)
        expected = f.read(length)
    assert len(expected) == length == ckpt.nbytes("lm_head.weight")
    # The range is the tensor's bytes: the loaded tensor is those bytes.
    assert bytes(memoryview(ckpt.get("lm_head.weight").view(mx.uint16))) == expected
    with ReadAhead([[(file, offset, length)]] * 3, depth=1) as read_ahead:
        read_ahead.reached(0)
    # Leaving the block joins the thread even though it was never allowed past group 1.
    assert not read_ahead._thread.is_alive()


# -- NaN MXFP4 scales (issue 13) --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_a_nan_scale_is_refused_at_load_naming_the_tensor(tmp_path, tiny_checkpoint,
                                                          tiny_original_checkpoint, layout):
    from safetensors.torch import load_file, save_file

    from openharmony.load import load_model

    source = tiny_checkpoint if layout == "hf" else tiny_original_checkpoint
    folder = tmp_path / "nan-scale"
    shutil.copytree(source, folder)
    file = folder / ("model.safetensors" if layout == "hf" else "original/model.safetensors")
    name = ("model.layers.1.mlp.experts.down_proj_scales" if layout == "hf"
            else "block.1.mlp.mlp2_weight.scales")
    tensors = load_file(file)
    assert not (tensors[name] == 255).any()
    tensors[name][3, 5, 1] = 255  # E8M0's NaN (OCP MX v1.0)
    tensors[name][6, 0, 0] = 255
    save_file(tensors, file, metadata={"format": "pt"})

    checkpoint = open_checkpoint(folder)  # headers only: opening still works
    with pytest.raises(CheckpointError) as raised:
        load_model(folder)
    message = str(raised.value)
    assert str(file) in message and repr(name) in message
    assert "scale byte 255" in message and "2 block(s)" in message and "[3, 5, 1]" in message
    # The other tensors are unaffected.
    assert checkpoint.get("layers.0.mlp.experts.down_proj.scales").dtype == mx.uint8
