"""Shared fixtures: tiny random-weight checkpoints, written once per test session.

Fixture names are a contract for every test module; keep them stable.

* `tiny_config` -- the `ModelConfig` of the "tiny" preset (2 layers, one sliding and one full;
  hidden 64, intermediate 128, 6 query heads x 2 KV heads of dim 16, 8 experts top-4,
  vocab 1024, window 8, YaRN RoPE; eos 200002 as gpt-oss, outside this vocabulary, so a
  tiny model never samples it; pad None). OpenAI's original/ config cannot spell eos/pad, so
  `tiny_original_checkpoint` reads back gpt-oss's defaults there (pad 199999).
* `tiny_checkpoint` -- that config in the Hugging Face layout: a folder with `config.json`
  and one `model.safetensors` (seed 0).
* `tiny_sharded_checkpoint` -- the same weights in three shards with
  `model.safetensors.index.json`.
* `tiny_original_checkpoint` -- the same weights in OpenAI's layout only: a folder whose
  `original/` holds `config.json` and `model.safetensors` (open the folder or `original/`).
* `tiny_vocab_config`, `tiny_vocab_checkpoint` -- the "tiny-vocab" preset (vocab 201088, the
  real o200k_harmony size, so the real tokenizer works end to end), HF layout, one file.

Every checkpoint folder is shared by the whole session: tests must not modify it (copy it
into `tmp_path` first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from openharmony.config import ModelConfig
from openharmony.testing.random_checkpoint import PRESETS, write_random_checkpoint


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return PRESETS["tiny"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "hf", tiny_config, seed=0)


@pytest.fixture(scope="session")
def tiny_sharded_checkpoint(tmp_path_factory, tiny_config) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny_sharded") / "hf", tiny_config,
                                   seed=0, shards=3)


@pytest.fixture(scope="session")
def tiny_original_checkpoint(tmp_path_factory, tiny_config) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny_original") / "ckpt",
                                   tiny_config, seed=0, layout="original")


@pytest.fixture(scope="session")
def tiny_vocab_config() -> ModelConfig:
    return PRESETS["tiny-vocab"]


@pytest.fixture(scope="session")
def tiny_vocab_checkpoint(tmp_path_factory, tiny_vocab_config) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny_vocab") / "hf",
                                   tiny_vocab_config, seed=0)
