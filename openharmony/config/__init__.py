"""The model config: one dataclass read from any of the three config.json spellings.

fields.py     `ModelConfig`'s fields, defaults and validation (`ConfigFields`), `YarnScaling`
spellings.py  reading and writing the Hugging Face and OpenAI `original/` spellings
values.py     checking values read from JSON
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import spellings
from .fields import (FULL, MAX_LAYERS, MXFP4_BLOCK, SLIDING, ConfigFields, YarnScaling,
                     alternating_layers)
from .spellings import is_original

__all__ = ["ModelConfig", "YarnScaling", "SLIDING", "FULL", "MXFP4_BLOCK", "MAX_LAYERS",
           "alternating_layers", "is_original"]


class ModelConfig(ConfigFields):
    """A gpt-oss config (frozen, validated on construction; field names are transformers')."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face or an OpenAI `original/` config dict."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        read = spellings.from_original if is_original(d) else spellings.from_hf
        return read(cls, d)

    @classmethod
    def from_path(cls, path: str | Path) -> "ModelConfig":
        """Read `config.json` (a file, a checkpoint folder, or a folder with `original/`)."""
        path = Path(path)
        if path.is_dir():
            candidates = [path / "config.json", path / "original" / "config.json"]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise ConfigError(f"no config.json in {path} (nor in {path / 'original'})")
            path = found
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_hf_dict(self, rope_spelling: str = "rope_scaling") -> dict[str, Any]:
        """The Hugging Face `config.json` for this config.

        `rope_spelling` is "rope_scaling" (as on the hub) or "rope_parameters" (transformers 5).
        """
        return spellings.to_hf_dict(self, rope_spelling)

    def to_original_dict(self) -> dict[str, Any]:
        """OpenAI's `original/config.json`. Only configs that layout can express are allowed."""
        return spellings.to_original_dict(self)
