"""Benchmarks' shared parts: what `scripts/bench.py` and the other benchmark scripts are thin
shells over (docs/benchmarks.md).

- `harness`: the machine-wide lock, page-cache eviction and residency, peak memory, prompts,
  the machine's read bandwidth, the CPU's name.
- `traffic`: the bytes of a decode step, and the bandwidth an engine achieved with them.
- `engines`: openharmony (its public API) and mlx-lm, each in a process of its own.
- `llama_bench`, `llama_build`: the anchors llama.cpp and ik_llama.cpp (commands, output,
  building them, the GGUF).
- `runner`: one benchmark, every run from a cold page cache; `report`: its table and ratios.
- `cache`, `cache_speed`: the KV cache variants' accuracy, and their memory and speed
  (scripts/measure_cache.py, scripts/measure_long_context.py; docs/cache.md).

It may import the rest of the package; nothing else in the package imports it. mlx-lm, and
transformers for the GGUF's tokenizer, come with the `bench` extra.
"""
