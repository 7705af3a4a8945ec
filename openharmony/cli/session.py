"""One run of the command line: its global options, and under mlx.launch its rank and group."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..download import resolve_model
from ..errors import OpenHarmonyError


@dataclass
class Session:
    """Made for each run by `OneLineErrors.main` (the typer context's `obj`), filled by the
    global options; commands take it from their context."""

    debug: bool = False
    vocab: str | None = None
    rank: int = 0  # under mlx.launch: this process's rank; only rank 0 reads input and prints
    _group: object = None  # the distributed group (docs/distributed.md), once joined
    _joined: bool = False

    def group(self):
        """The distributed group when started by mlx.launch (joined on first use), else None."""
        if not self._joined:
            from ..parallel import init_group

            self._group, self._joined = init_group(), True
        return self._group

    def load(self, model: str, dtype, precision=None):
        """The tokenizer (first: a missing vocabulary fails fast) and the model.

        Under mlx.launch the group is joined before anything can fail, so that a rank that
        fails leaves it (the others' next collective notices) rather than never joining it.
        """
        from ..tokenizer import load_tokenizer

        group = self.group()
        tokenizer = load_tokenizer(self.vocab)
        folder = resolve_model(model)
        from ..load import load_model

        loaded = load_model(folder, dtype.value if dtype is not None else None, group=group,
                            precision=precision.value if precision is not None else None)
        if group is not None and group.rank() != 0:
            self._only_rank0_prints(group.rank())
        if loaded.config.vocab_size < tokenizer.n_vocab:
            raise OpenHarmonyError(f"the model's vocabulary ({loaded.config.vocab_size} tokens) "
                                   f"is smaller than the tokenizer's ({tokenizer.n_vocab})")
        return tokenizer, loaded

    def _only_rank0_prints(self, rank: int) -> None:
        """On ranks other than 0: no output but errors (which `OneLineErrors` prints)."""
        self.rank = rank
        sys.stdout = sys.stderr = open(os.devnull, "w")
