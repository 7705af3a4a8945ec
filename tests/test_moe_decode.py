"""The fused MoE decode op (csrc/moe_decode.cpp, `native.moe_decode`) against a float64
reference written from the model's definition and the OCP MX spec, and against the same MLP
composed of MLX's own ops (`mx.gather_qmm`), on every instruction-set path this CPU has.

Shapes are small but not multiples of the op's 64-row chunks, and H and I hold one whole
512-weight chunk of the AVX-512 decode kernel (csrc/decode_avx512.cpp) plus a few blocks of
its per-block tail; some tokens share experts (their rows go through one kernel call, 4 at a
time at most, on the shared MXFP4 kernel).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from openharmony import native

from test_native import ISAS, isa_or_skip, random_mxfp4, spec_decode

H, I, E, TOP_K = 544, 608, 8, 4  # K = 512 + 1 and 512 + 3 blocks; 544 rows: 8.5 chunks
LIMIT, ALPHA = 7.0, 1.702


def as_mlx(codes, scales):
    e, n, g, _ = codes.shape
    return mx.array(codes.reshape(e, n, g * 16).view(np.uint32)), mx.array(scales)


def make_weights(rng, experts=E, gate_up_scales=(118, 130)):
    gate_up = random_mxfp4(rng, experts, 2 * I, H, gate_up_scales)
    down = random_mxfp4(rng, experts, H, I)
    return dict(router_w=rng.standard_normal((experts, H)).astype(np.float32),
                router_b=rng.standard_normal(experts).astype(np.float32),
                gate_up=gate_up,
                gate_up_bias=rng.standard_normal((experts, 2 * I)).astype(np.float32),
                down=down, down_bias=rng.standard_normal((experts, H)).astype(np.float32))


def reference(x, w, top_k=TOP_K):
    """float64, from the definition: router, top-k, softmax, SwiGLU experts, weighted sum."""
    x = x.astype(np.float64)
    logits = x @ w["router_w"].T.astype(np.float64) + w["router_b"]
    chosen = np.argsort(-logits, axis=-1)[:, :top_k]
    ordered = np.sort(logits, axis=-1)[:, ::-1]
    # The top-k choice must not hinge on rounding: the k-th and (k+1)-th logits stand apart.
    if top_k < logits.shape[-1]:
        assert np.all(ordered[:, top_k - 1] - ordered[:, top_k] > 1e-3)
    gate_up, down = spec_decode(*w["gate_up"]), spec_decode(*w["down"])
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        top = logits[t, chosen[t]]
        weights = np.exp(top - top.max())
        weights /= weights.sum()
        for e, weight in zip(chosen[t], weights):
            h = gate_up[e] @ x[t] + w["gate_up_bias"][e]
            gate, up = np.minimum(h[::2], LIMIT), np.clip(h[1::2], -LIMIT, LIMIT)
            with np.errstate(over="ignore"):  # exp(-alpha * gate) -> inf: a = -0
                a = gate / (1 + np.exp(-ALPHA * gate)) * (up + 1)
            y[t] += weight * (down[e] @ a + w["down_bias"][e])
    return y


def mlx_ops(x, w):
    """The same MLP from MLX's ops, as openharmony/moe.py composes it on MLX's kernels."""
    x = mx.array(x)
    logits = x @ mx.array(w["router_w"]).T + mx.array(w["router_b"])
    indices = mx.argpartition(-logits, kth=TOP_K - 1, axis=-1)[..., :TOP_K]
    weights = mx.softmax(mx.take_along_axis(logits, indices, axis=-1), axis=-1)

    def experts(v, blocks, bias):
        y = mx.gather_qmm(v, *as_mlx(*blocks), None, rhs_indices=indices, transpose=True,
                          group_size=32, bits=4, mode="mxfp4")
        return y + mx.expand_dims(mx.array(bias)[indices], -2)

    h = experts(x[:, None, None, :], w["gate_up"], w["gate_up_bias"])
    gate = mx.minimum(h[..., ::2], LIMIT)
    up = mx.clip(h[..., 1::2], -LIMIT, LIMIT)
    y = experts(gate * mx.sigmoid(ALPHA * gate) * (up + 1), w["down"], w["down_bias"])
    return np.array((y[:, :, 0] * weights[..., None]).sum(axis=1), dtype=np.float64)


def run(x, w, isa, gate_up=None, down=None, top_k=TOP_K):
    gate_up = gate_up or as_mlx(*w["gate_up"])
    down = down or as_mlx(*w["down"])
    return native.moe_decode(mx.array(x), mx.array(w["router_w"]), mx.array(w["router_b"]),
                             *gate_up, mx.array(w["gate_up_bias"]), *down,
                             mx.array(w["down_bias"]), top_k, LIMIT, ALPHA, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tokens", [1, 2, 5])  # 5 tokens on 8 experts: shared experts
def test_moe_decode_matches_the_definition_and_mlx_ops(isa, tokens):
    isa_or_skip(isa)
    rng = np.random.default_rng(tokens)
    w = make_weights(rng)
    x = rng.standard_normal((tokens, H)).astype(np.float32)
    y = run(x, w, isa)
    assert y.dtype == mx.float32 and y.shape == (tokens, H)
    y = np.array(y, dtype=np.float64)
    expected = reference(x, w)
    scale = np.abs(expected).max()
    assert np.abs(y - expected).max() <= 1e-5 * scale
    assert np.abs(y - mlx_ops(x, w)).max() <= 1e-5 * scale


@pytest.mark.parametrize("isa", ISAS)
def test_moe_decode_decodes_extreme_scales_as_the_spec(isa):
    # Scale byte 0 is 2**-127 (a float32 subnormal), 255 is NaN: one expert, gate_up scales
    # 0..2, inputs large enough that the tiny products still reach the output (biases zero).
    isa_or_skip(isa)
    rng = np.random.default_rng(11)
    w = make_weights(rng, experts=1, gate_up_scales=(0, 3))
    w["gate_up_bias"][:] = 0
    w["down_bias"][:] = 0
    x = (rng.standard_normal((1, H)) * 1e30).astype(np.float32)
    y = np.array(run(x, w, isa, top_k=1), dtype=np.float64)
    expected = reference(x, w, top_k=1)
    assert np.abs(expected).max() > 1e-9  # the subnormal scales' products are not lost
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()
    # A NaN scale in one block of one gate_up row makes every output NaN: in the last block
    # (the per-block tail) and in the first (the 512-weight chunks).
    for block in (-1, 0):
        scales = w["gate_up"][1].copy()
        scales[0, 6, block] = 255
        nan_w = dict(w, gate_up=(w["gate_up"][0], scales))
        assert np.isnan(np.array(run(x, nan_w, isa, top_k=1))).all()


def test_moe_decode_reads_mapped_checkpoint_tensors(tmp_path):
    isa_or_skip("portable")
    rng = np.random.default_rng(7)
    w = make_weights(rng)
    x = rng.standard_normal((2, H)).astype(np.float32)
    path = tmp_path / "experts.bin"
    parts = [w["gate_up"][0], w["gate_up"][1], w["down"][0], w["down"][1]]
    path.write_bytes(b"".join(p.tobytes() for p in parts))
    mapping, offset, mapped = native.map_file(path), 0, []
    for part in parts:
        mapped.append(mapping.tensor(offset, list(part.shape), mx.uint8))
        offset += part.nbytes
    y = run(x, w, "auto", gate_up=mapped[:2], down=mapped[2:])
    assert np.array_equal(np.array(y), np.array(run(x, w, "auto")))


def test_moe_decode_refuses_mismatched_operands():
    isa_or_skip("portable")
    rng = np.random.default_rng(3)
    w = make_weights(rng)
    x = rng.standard_normal((1, H)).astype(np.float32)
    gate_up = as_mlx(*w["gate_up"])
    with pytest.raises(ValueError, match="moe_decode: gate_up must be"):
        run(x, w, "auto", down=gate_up)
    with pytest.raises(ValueError, match="moe_decode: top_k"):
        native.moe_decode(mx.array(x), mx.array(w["router_w"]), mx.array(w["router_b"]),
                          *gate_up, mx.array(w["gate_up_bias"]), *as_mlx(*w["down"]),
                          mx.array(w["down_bias"]), E + 1, LIMIT, ALPHA)
