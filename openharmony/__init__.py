"""openharmony: GPT-OSS inference on MLX."""

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, OpenHarmonyError

__all__ = ["ModelConfig", "OpenHarmonyError", "ConfigError", "CheckpointError"]
__version__ = "0.1.0"
