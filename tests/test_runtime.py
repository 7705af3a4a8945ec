"""The runtime seam (openharmony/runtime): the one switch, and a model held as its table says.

The switch is `select(device, env)`; the kernels themselves are checked against MLX's ops
and the OCP MX spec in test_native.py, and the model on each of them against transformers in
test_model.py.
"""

from __future__ import annotations

import dataclasses
import warnings

import mlx.core as mx
import pytest

from openharmony import native, runtime
from openharmony.cache import make_caches
from openharmony.load import load_model
from openharmony.memory import checkpoint_summary
from openharmony.model import Model
from openharmony.random_checkpoint import write_random_checkpoint
from openharmony.weights import open_checkpoint
from openharmony.runtime import MLXKernels, NativeKernels, NativeKernelsError, placement

needs_native = pytest.mark.skipif(
    not native.available, reason=f"native kernels unavailable: {native.unavailable_reason}")


def test_the_kernels_setting_is_checked():
    with pytest.raises(NativeKernelsError, match="OPENHARMONY_KERNELS must be one of"):
        runtime.select(env={runtime.ENV_VAR: "fast"})
    assert type(runtime.select(mx.cpu, env={runtime.ENV_VAR: "mlx"})) is MLXKernels
    assert type(runtime.select(mx.cpu, env={runtime.ENV_VAR: " MLX "})) is MLXKernels


def test_a_gpu_runs_on_mlx_kernels_without_the_cpu_dequantize_path():
    kernels = runtime.select(mx.Device(mx.gpu), env={runtime.ENV_VAR: "auto"})
    assert type(kernels) is MLXKernels and kernels.dequantize_min_rows is None
    assert runtime.select(mx.cpu, env={runtime.ENV_VAR: "mlx"}).dequantize_min_rows == 16


@needs_native
@pytest.mark.parametrize("asked", ["auto", "native", ""])
def test_the_cpu_runs_on_the_native_kernels_where_they_are_built(asked):
    kernels = runtime.select(mx.cpu, env={runtime.ENV_VAR: asked})
    assert type(kernels) is NativeKernels and kernels.reads_mapped and kernels.reads_bf16
    assert type(runtime.select(mx.cpu, env={})) is NativeKernels


def test_without_the_extension_auto_warns_once_and_native_refuses(monkeypatch):
    monkeypatch.setattr(native, "available", False)
    monkeypatch.setattr(native, "unavailable_reason", "the native kernels are not built")
    monkeypatch.setattr(runtime, "_warned", False)
    auto = {runtime.ENV_VAR: "auto"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [type(runtime.select(mx.cpu, auto)) for _ in range(3)] == [MLXKernels] * 3
    assert len(caught) == 1 and "not built" in str(caught[0].message)
    with pytest.raises(NativeKernelsError, match="not built"):
        runtime.select(mx.cpu, env={runtime.ENV_VAR: "native"})


@pytest.mark.parametrize("kernels", ["native", "mlx"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_loaded_model_holds_every_tensor_as_the_placement_table_says(
        monkeypatch, tiny_checkpoint, kernels, dtype):
    if kernels == "native" and not native.available:
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason}")
    monkeypatch.setenv(runtime.ENV_VAR, kernels)
    model = load_model(tiny_checkpoint, dtype)
    assert model.kernels.name == kernels
    checkpoint = open_checkpoint(tiny_checkpoint)
    table = placement.table(checkpoint, model.dtype, model.kernels)
    held = dict(_tensors(model))
    for name, where in table.items():
        if where.packed is not None:  # MXFP4: the blocks are the module's `weight`
            name = name.replace(".blocks", ".weight")
        tensor = held[name]
        assert native.is_mapped(tensor) == where.in_place, name
        if where.packed is None:
            assert tensor.dtype == where.dtype, name
        elif where.in_place:
            assert tensor.dtype == mx.uint8, name  # the stored bytes
        else:
            assert tensor.dtype == (mx.uint8 if name.endswith(".scales") else mx.uint32), name
    # Something is mapped exactly where the kernels read mapped tensors.
    assert any(w.in_place for w in table.values()) == (kernels == "native")


@pytest.mark.parametrize("kernels", ["native", "mlx"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_memory_estimate_is_what_the_loaded_model_holds(monkeypatch, tiny_checkpoint,
                                                            kernels, dtype):
    """memory.py reads the placement table: its weight bytes (and those in place) are what a
    model loaded on the same kernels holds, counted from the loaded tensors."""
    if kernels == "native" and not native.available:
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason}")
    monkeypatch.setenv(runtime.ENV_VAR, kernels)
    model = load_model(tiny_checkpoint, dtype)
    held = dict(_tensors(model))
    in_place = sum(t.nbytes for t in held.values() if native.is_mapped(t))
    summary = checkpoint_summary(open_checkpoint(tiny_checkpoint), dtype, 16, model.kernels)
    assert summary["weight_bytes"] == sum(t.nbytes for t in held.values())
    assert summary["weight_bytes_in_place"] == in_place


def _tensors(module, prefix=""):
    """Every tensor a module holds, parameters and mapped tensors alike, by dotted name."""
    for key, value in module.items():
        name = prefix + key
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _tensors(item, f"{name}.{i}.")
        elif hasattr(value, "items"):
            yield from _tensors(value, name + ".")
        else:
            yield name, value


class Recording(MLXKernels):
    """MLX's kernels, counting the attention calls the caches make through the model, with a
    packed-cache kernel written here from its contract: dequantize, then float attention."""

    def __init__(self):
        super().__init__(mx.cpu)
        self.calls = {"attention": 0, "packed_attention": 0}

    def attention(self, queries, keys, values, **kwargs):
        self.calls["attention"] += 1
        return super().attention(queries, keys, values, **kwargs)

    def packed_attention(self, queries, keys, values, *, bits, group_size, **kwargs):
        self.calls["packed_attention"] += 1
        k, v = (mx.dequantize(*parts, group_size=group_size, bits=bits) for parts in (keys, values))
        return super().attention(queries, k, v, **kwargs)


def test_the_caches_attend_through_the_models_kernels(tmp_path, tiny_config):
    # head_dim 32 (tiny's is 16) so that the full-attention layer's cache can be quantized.
    config = dataclasses.replace(tiny_config, head_dim=32)
    path = write_random_checkpoint(tmp_path, config, seed=3)
    checkpoint = open_checkpoint(path)
    tokens = mx.array([[5, 17, 3, 99, 42, 7, 1, 64, 300, 12, 8]])
    kernels = Recording()
    model = Model(config, mx.float32, kernels=kernels)
    model.load_weights(list(model.sanitize(checkpoint.weights()).items()))
    logits = model(tokens, model.make_cache(kv_bits=8))
    sliding = sum(config.is_sliding(i) for i in range(config.num_hidden_layers))
    assert kernels.calls == {"attention": sliding,
                             "packed_attention": config.num_hidden_layers - sliding}
    # The same model with MLX's own caches (quantized_matmul for the 8-bit layer).
    plain = model(tokens, make_caches(config, kv_bits=8))
    assert float(mx.abs(logits - plain).max()) <= 1e-4
