"""openharmony: GPT-OSS inference on MLX."""

from . import blas

blas.preload()  # before anything imports mlx: it picks the BLAS MLX's CPU matmuls run on

from .cache import PromptCache
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, DistributedError, InputError, OpenHarmonyError
from .generate import (ContextLengthError, GenerationChunk, GenerationError, GenerationResult,
                       GenerationStats, NonFiniteLogitsError, generate, stream_generate)
from .load import load_model
from .model import Model
from .sampling import SamplingError, SamplingOptions
from .tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "load_model", "Model", "ModelConfig",
    "generate", "stream_generate", "GenerationResult", "GenerationChunk", "GenerationStats",
    "SamplingOptions", "PromptCache", "load_tokenizer", "Tokenizer",
    "OpenHarmonyError", "ConfigError", "CheckpointError", "GenerationError",
    "ContextLengthError", "SamplingError", "InputError", "NonFiniteLogitsError",
    "DistributedError",
]
__version__ = "0.1.0"
