"""`Kernels`: what the model's layers ask of a backend, and nothing else.

A model holds one `Kernels`, chosen by `runtime.select()` when it loads, and every layer calls
it for its matmuls: `Linear` for `linear`, `Embedding` for `embed`, the MXFP4 experts for
`gather_mxfp4`, `dequantized_matmul` and `expert_pairs`, and the KV caches for `attention`.
The two flags say how the backend reads weights; the placement table (placement.py) turns
them into how each checkpoint tensor is held. A new backend (a CUDA or Metal path) is a
subclass, usually of `MLXKernels`, overriding what it does better.
"""

from __future__ import annotations

import mlx.core as mx


class Kernels:
    name: str = "?"
    why: str = ""  # why `runtime.select` chose these kernels (for messages)
    # Multiplies bfloat16 weights as stored with float32 activations (float32 products and
    # sums): the dense weights then stay bfloat16 in memory under float32 compute.
    reads_bf16: bool = False
    # Reads tensors in place from a checkpoint's mapping (`Checkpoint.map`), so loading copies
    # none of them.
    reads_mapped: bool = False
    # The attention materializes a chunk's scores and probabilities [heads, chunk, keys] in
    # float32 (MLX's sdpa does; a flash-style kernel does not): what a prefill's working memory
    # must count (memory.check_prompt_fits).
    materializes_scores: bool = True

    def linear(self, x: mx.array, weight, bias: mx.array | None = None) -> mx.array:
        """x [..., in] @ weight [out, in].T (+ bias [out]) -> [..., out] in x's dtype."""
        raise NotImplementedError

    def embed(self, table, tokens: mx.array) -> mx.array:
        """Rows `tokens` [...] of `table` [vocab, dims] -> [..., dims] in the table's dtype."""
        raise NotImplementedError

    def gather_mxfp4(self, x: mx.array, weight, scales, experts: mx.array,
                     sorted_indices: bool) -> mx.array:
        """x [..., 1, in] times MXFP4 expert `experts[...]` (weight and scales as
        `pack_mxfp4` holds them) transposed -> [..., 1, out]: the semantics of
        `mx.gather_qmm(..., transpose=True, mode="mxfp4")`. `sorted_indices`: the rows come
        sorted by expert."""
        raise NotImplementedError

    def dequantized_matmul(self, x: mx.array, weight, scales) -> mx.array:
        """x [M, in] times one expert's MXFP4 weights [out, ...], decoded exactly first."""
        raise NotImplementedError

    def expert_pairs(self, experts, x: mx.array, indices: mx.array) -> mx.array:
        """Every (token, expert) pair through its expert: x [N, H] and indices [N, k] ->
        [N, k, H], row (n, j) = experts.mlp of token n through expert indices[n, j].
        `experts` is `moe.Experts` (its `mlp` gathers, its `dense_mlp` runs one expert on
        many rows); how the pairs are grouped (sorted, dequantized) is the backend's choice."""
        raise NotImplementedError

    def pack_mxfp4(self, blocks, scales) -> tuple:
        """The checkpoint's MXFP4 `blocks` [..., G, 16] and `scales` [..., G] (uint8) as this
        backend's expert weights take them (`gather_mxfp4`)."""
        raise NotImplementedError

    def is_mapped(self, value) -> bool:
        """Whether `value` is a tensor used in place from a checkpoint's mapping."""
        return False

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, *, scale: float,
                  sinks: mx.array, mask) -> mx.array:
        """Attention over float keys and values, with one sink logit per head: the semantics
        of `openharmony.cache.base.float_attention` (the caches' storages call this; the
        model hands it to `make_caches`)."""
        raise NotImplementedError

    # Attention over `mx.quantize`'s packed keys and values as a `QuantizedStorage` holds them:
    # `(queries, keys, values, *, scale, sinks, mask, bits, group_size) -> [B, n_heads, T, D]`
    # in the queries' dtype, or None where the backend has no such kernel (the storage then
    # runs its own path on MLX's quantized_matmul).
    packed_attention = None

    # The whole MoE MLP of a few tokens in one call, `(mlp, x [N, H]) -> [N, H]` (`mlp` is
    # `moe.MLP`), or None where the backend has no such kernel (the MLP then runs the router
    # and `expert_pairs`); the call itself may return None for inputs it does not take.
    fused_moe = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
