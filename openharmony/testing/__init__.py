"""What tests, benchmarks and users writing their own tests share: checkpoints whose output is
known in advance (`scripted`)."""

from .scripted import bigram_chains, write_bigram_checkpoint

__all__ = ["bigram_chains", "write_bigram_checkpoint"]
