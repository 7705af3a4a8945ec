"""What tests, benchmarks and users writing their own tests share: random-weight checkpoints
in the real file format and shapes (`random_checkpoint`), and checkpoints whose output is known
in advance (`scripted`). Nothing else in the package imports this one."""

from .random_checkpoint import PRESETS, checkpoint_nbytes, preset_config, write_random_checkpoint
from .scripted import bigram_chains, write_bigram_checkpoint

__all__ = ["PRESETS", "checkpoint_nbytes", "preset_config", "write_random_checkpoint",
           "bigram_chains", "write_bigram_checkpoint"]
