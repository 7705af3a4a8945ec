"""The random checkpoint writer, checked against independent readers.

The files are read back with the `safetensors` library and loaded by transformers'
`GptOssForCausalLM` (the reference implementation); the MXFP4 tensors are decoded here from
the OCP MX spec, not by project code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from openharmony.testing import random_checkpoint
from openharmony.config import ModelConfig
from openharmony.errors import ConfigError
from openharmony.testing.random_checkpoint import PRESETS, write_random_checkpoint

REPO = Path(__file__).resolve().parents[1]

# OCP MX v1.0 E2M1 code -> value (sign in bit 3).
E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def decode_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[..., G, 16] u8 codes, [..., G] u8 E8M0 -> [..., G*32] float32; low nibble first."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = E2M1[codes] * np.exp2(scales.astype(np.float32) - 127)[..., None]
    return values.reshape(*blocks.shape[:-2], -1)


def read_all(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of every safetensors file in `folder`, as float32 / uint8 numpy arrays."""
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                tensors[name] = (t.float() if t.is_floating_point() else t).numpy()
    return tensors


def test_bfloat16_rounding_matches_torch():
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    values[:4] = [0.0, -0.0, 1.00390625, 1.01171875]  # two exact ties: round to even
    ours = np.frombuffer(random_checkpoint._to_bf16_bytes(values), "<u2")
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(ours, expected.view(np.uint16))


def test_real_presets_match_the_published_configs():
    for name in ("20b", "120b"):
        folder = REPO / "configs" / f"gpt-oss-{name}"
        assert PRESETS[name] == ModelConfig.from_path(folder / "config.json")
        original = ModelConfig.from_path(folder / "original_config.json")
        assert original.to_original_dict() == PRESETS[name].to_original_dict()


def test_tiny_presets_are_small_and_differ_only_in_vocabulary():
    tiny, vocab = PRESETS["tiny"], PRESETS["tiny-vocab"]
    assert random_checkpoint.checkpoint_nbytes(tiny) < 5_000_000
    assert vocab.vocab_size == 201088 and vocab.hidden_size == 64
    assert vocab.num_hidden_layers == tiny.num_hidden_layers
    assert tiny.is_sliding(0) and not tiny.is_sliding(1)


def test_20b_checkpoint_size_is_that_of_the_hub():
    # openai/gpt-oss-20b: model.safetensors.index.json metadata.total_size
    assert random_checkpoint.checkpoint_nbytes(PRESETS["20b"]) == 13_761_264_768


def test_transformers_loads_the_hf_layout_with_every_weight(tiny_checkpoint):
    from transformers import GptOssForCausalLM, Mxfp4Config

    model, info = GptOssForCausalLM.from_pretrained(
        tiny_checkpoint, quantization_config=Mxfp4Config(dequantize=True),
        dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    stored = read_all(tiny_checkpoint)
    # The dequantized experts are the spec's decoding of the stored bytes (transposed).
    p = "model.layers.1.mlp.experts."
    gate_up = decode_mxfp4(stored[p + "gate_up_proj_blocks"], stored[p + "gate_up_proj_scales"])
    np.testing.assert_array_equal(
        model.model.layers[1].mlp.experts.gate_up_proj.detach().numpy(),
        gate_up.transpose(0, 2, 1))


def test_tiny_forward_is_well_conditioned(tiny_checkpoint, tiny_config):
    """Finite, non-degenerate logits, and the SwiGLU clamp is exercised in every layer."""
    from transformers import GptOssForCausalLM, Mxfp4Config

    model = GptOssForCausalLM.from_pretrained(
        tiny_checkpoint, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32)
    expert_inputs = {}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.experts.register_forward_pre_hook(
            lambda module, args, i=i: expert_inputs.__setitem__(i, args[0].numpy().copy()))
    tokens = torch.tensor(np.random.default_rng(0).integers(0, tiny_config.vocab_size, (1, 32)))
    with torch.no_grad():
        logits = model(tokens).logits[0].numpy()

    assert np.isfinite(logits).all()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert probs.max() < 0.95  # not one-hot
    assert probs.max(-1).mean() > 10 / tiny_config.vocab_size  # not uniform either
    assert len(set(logits.argmax(-1).tolist())) > len(tokens[0]) // 2

    stored = read_all(tiny_checkpoint)
    limit = tiny_config.swiglu_limit
    for i, x in expert_inputs.items():
        p = f"model.layers.{i}.mlp.experts."
        w = decode_mxfp4(stored[p + "gate_up_proj_blocks"], stored[p + "gate_up_proj_scales"])
        pre = np.einsum("th,eoh->eto", x.reshape(-1, x.shape[-1]), w) + \
            stored[p + "gate_up_proj_bias"][:, None]
        gate, up = pre[..., 0::2], pre[..., 1::2]
        assert np.isfinite(pre).all()
        assert 0.01 < (gate > limit).mean() < 0.2, i
        assert 0.01 < (np.abs(up) > limit).mean() < 0.3, i


def test_original_layout_holds_the_same_weights(tmp_path, tiny_config):
    write_random_checkpoint(tmp_path, tiny_config, seed=3, layout="both")
    hf, orig = read_all(tmp_path), read_all(tmp_path / "original")
    from_original = ModelConfig.from_path(tmp_path / "original" / "config.json")
    assert replace(from_original, pad_token_id=None) == tiny_config  # original/ has no pad
    names = {"model.embed_tokens.weight": "embedding.weight", "model.norm.weight": "norm.scale",
             "lm_head.weight": "unembedding.weight"}
    for n in range(tiny_config.num_hidden_layers):
        h, o = f"model.layers.{n}.", f"block.{n}."
        names.update({
            h + "input_layernorm.weight": o + "attn.norm.scale",
            h + "self_attn.sinks": o + "attn.sinks",
            h + "self_attn.o_proj.weight": o + "attn.out.weight",
            h + "self_attn.o_proj.bias": o + "attn.out.bias",
            h + "post_attention_layernorm.weight": o + "mlp.norm.scale",
            h + "mlp.router.weight": o + "mlp.gate.weight",
            h + "mlp.router.bias": o + "mlp.gate.bias",
            h + "mlp.experts.gate_up_proj_blocks": o + "mlp.mlp1_weight.blocks",
            h + "mlp.experts.gate_up_proj_scales": o + "mlp.mlp1_weight.scales",
            h + "mlp.experts.gate_up_proj_bias": o + "mlp.mlp1_bias",
            h + "mlp.experts.down_proj_blocks": o + "mlp.mlp2_weight.blocks",
            h + "mlp.experts.down_proj_scales": o + "mlp.mlp2_weight.scales",
            h + "mlp.experts.down_proj_bias": o + "mlp.mlp2_bias",
        })
        for kind in ("weight", "bias"):
            qkv = np.concatenate([hf[h + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            np.testing.assert_array_equal(orig[o + f"attn.qkv.{kind}"], qkv)
    assert set(orig) == set(names.values()) | {f"block.{n}.attn.qkv.{k}" for n in range(2)
                                               for k in ("weight", "bias")}
    for hf_name, orig_name in names.items():
        np.testing.assert_array_equal(orig[orig_name], hf[hf_name], err_msg=orig_name)


def test_shards_hold_the_same_weights_and_a_correct_index(tmp_path, tiny_config,
                                                          tiny_checkpoint):
    write_random_checkpoint(tmp_path, tiny_config, seed=0, shards=3)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    total = 0
    for file in files:
        with safe_open(tmp_path / file, "pt") as f:
            for name in f.keys():
                assert index["weight_map"][name] == file
                t = f.get_tensor(name)
                total += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == total
    sharded, single = read_all(tmp_path), read_all(tiny_checkpoint)
    assert len(index["weight_map"]) == len(single) == len(sharded)
    for name, value in single.items():
        np.testing.assert_array_equal(sharded[name], value, err_msg=name)


def test_weights_depend_on_the_seed_only(tmp_path, tiny_config, tiny_checkpoint):
    write_random_checkpoint(tmp_path / "same", tiny_config, seed=0)
    write_random_checkpoint(tmp_path / "other", tiny_config, seed=1)
    same = (tmp_path / "same" / "model.safetensors").read_bytes()
    assert same == (tiny_checkpoint / "model.safetensors").read_bytes()
    assert same != (tmp_path / "other" / "model.safetensors").read_bytes()


def test_stored_dtypes_and_the_rope_parameters_spelling(tmp_path, tiny_config):
    write_random_checkpoint(tmp_path, tiny_config, rope_spelling="rope_parameters")
    config = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in config and "rope_scaling" not in config
    assert ModelConfig.from_path(tmp_path) == tiny_config
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        for name in f.keys():
            dtype = f.get_slice(name).get_dtype()
            assert dtype == ("U8" if name.endswith(("_blocks", "_scales")) else "BF16"), name


def test_writing_streams_with_bounded_memory(tmp_path, monkeypatch, tiny_vocab_config):
    """A 100 MB checkpoint is written with a few MB of Python/numpy memory."""
    monkeypatch.setattr(random_checkpoint, "CHUNK_ELEMENTS", 1 << 18)  # 1 MB of float32
    tracemalloc.start()
    try:
        write_random_checkpoint(tmp_path, tiny_vocab_config, layout="both", shards=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    written = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert written > 100_000_000
    assert peak < 12_000_000, peak


def test_command_line(tmp_path):
    out = tmp_path / "ckpt"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_checkpoint.py"),
                    str(out), "--preset", "tiny", "--layout", "both", "--shards", "2",
                    "--seed", "5"], check=True, capture_output=True)
    assert ModelConfig.from_path(out) == PRESETS["tiny"]
    assert (out / "model.safetensors.index.json").is_file()
    assert (out / "original" / "model.safetensors").is_file()


def test_command_line_truncates_layers(tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "make_random_checkpoint.py")]
    subprocess.run([*script, str(tmp_path / "one"), "--preset", "tiny", "--layers", "1"],
                   check=True, capture_output=True)
    config = ModelConfig.from_path(tmp_path / "one")
    assert config.num_hidden_layers == 1
    assert config.layer_types == PRESETS["tiny"].layer_types[:1]
    assert config.hidden_size == PRESETS["tiny"].hidden_size
    refused = subprocess.run([*script, str(tmp_path / "nine"), "--preset", "tiny",
                              "--layers", "9"], capture_output=True, text=True)
    assert refused.returncode != 0 and "2 layers" in refused.stderr
    assert not (tmp_path / "nine").exists()


def test_bad_arguments_are_refused(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="layout"):
        write_random_checkpoint(tmp_path, tiny_config, layout="gguf")
    all_full = replace(tiny_config, layer_types=("full_attention",) * 2)
    with pytest.raises(ConfigError, match="original"):
        write_random_checkpoint(tmp_path / "x", all_full, layout="both")
    assert not (tmp_path / "x").exists()  # refused before writing anything
