"""openharmony: GPT-OSS inference on MLX."""

from .config import ModelConfig
from .errors import CheckpointError, ConfigError, OpenHarmonyError
from .model import Model, load_model

__all__ = ["ModelConfig", "Model", "load_model",
           "OpenHarmonyError", "ConfigError", "CheckpointError"]
__version__ = "0.1.0"
