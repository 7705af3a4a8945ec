"""Expert parallelism over `mx.distributed`: each rank holds a share of every layer's experts.

* `group.py`: joining the group that `mlx.launch` set up, the watchdog that bounds every wait
  on the other ranks, and broadcasts from rank 0 (tokens, input lines).
* `shard.py`: which experts a rank holds (`expert_ranges`), and `ExpertShard`, the expert
  forward of one rank summed over all of them with `all_sum`.

See docs/distributed.md.
"""

from .group import broadcast_from_rank0, broadcast_text, evaluate, init_group, is_launched
from .shard import ExpertShard, expert_ranges

__all__ = ["ExpertShard", "expert_ranges", "init_group", "is_launched", "evaluate",
           "broadcast_from_rank0", "broadcast_text"]
