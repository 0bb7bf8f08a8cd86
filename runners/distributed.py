"""Sharding a run over processes with torch.distributed (torchrun, one or many nodes).

`torchrun --nproc_per_node=N main.py ...` starts N copies of the same command with
RANK, WORLD_SIZE and LOCAL_RANK set; `setup` reads them, joins the process group
(NCCL when the rank computes on CUDA, gloo otherwise) and gives the rank its device
(cuda:LOCAL_RANK when CUDA is there). Without those variables (a plain `python
main.py`) nothing is initialised and the helpers below do nothing, so the runner
has a single code path.

Work is split by image, not by batch: rank r restores the pending images whose
position in the pending list is r modulo the world size. Because every image has
its own seed and leaves its own record, the split changes no result, and a rerun
with any number of ranks resumes from the records of all earlier runs.
"""
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Mapping, Optional, Sequence, TypeVar

import torch

T = TypeVar("T")
# Ranks wait for the slowest one at the end (before rank 0 merges); a generous limit keeps a
# slow node or uneven shard from tripping the default 10-30 minute collective timeout.
COLLECTIVE_TIMEOUT = timedelta(hours=6)
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Context:
    """This process's place in the run; rank 0 of world 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def shard(self, items: Sequence[T]) -> List[T]:
        """This rank's share: items k with k % world_size == rank (each item goes to exactly one rank)."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> List[Any]:
        """Every rank's `obj`, in rank order (also a barrier)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def env_context(env: Mapping[str, str] = None) -> Context:
    """Rank, world size and local rank from torchrun's variables (no process group yet)."""
    env = os.environ if env is None else env
    if not all(k in env for k in ENV_KEYS):
        return Context()
    try:
        rank, world, local = (int(env[k]) for k in ENV_KEYS)
    except ValueError:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (got "
                         f"{', '.join(repr(env[k]) for k in ENV_KEYS)})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return Context(rank=rank, world_size=world, local_rank=local)


def rank_device(requested: Optional[str], ctx: Context) -> Optional[str]:
    """The device this rank should use: cuda:LOCAL_RANK for a default or index-less CUDA request.

    An explicit index (cuda:1) is refused with several processes (they would share one
    GPU); a non-CUDA device is kept as given; None keeps the runner's own default when CUDA
    is absent.
    """
    if ctx.world_size > 1 and requested is not None and requested.startswith("cuda:"):
        raise ValueError(f"--device {requested} with {ctx.world_size} processes would put every rank on one GPU; "
                         f"give --device cuda (rank r takes cuda:LOCAL_RANK) and choose GPUs with "
                         f"CUDA_VISIBLE_DEVICES")
    wants_cuda = requested in (None, "cuda") and torch.cuda.is_available()
    if ctx.world_size > 1 and wants_cuda:
        count = torch.cuda.device_count()
        if ctx.local_rank >= count:  # NCCL refuses two ranks on one GPU
            raise ValueError(f"LOCAL_RANK {ctx.local_rank} has no GPU of its own: this node has {count}; "
                             f"start at most {count} processes per node (--nproc_per_node) or add --device cpu")
        return f"cuda:{ctx.local_rank}"
    return requested


def setup(ctx: Context, device: torch.device) -> Context:
    """Join the process group for a multi-process run; a no-op for world size 1."""
    if ctx.world_size == 1:
        return ctx
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        return Context(ctx.rank, ctx.world_size, ctx.local_rank, dist.get_backend())
    kwargs = {}
    if backend == "nccl":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the communicator to this GPU (no guessing in barrier)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size,
                            timeout=COLLECTIVE_TIMEOUT, **kwargs)
    return Context(ctx.rank, ctx.world_size, ctx.local_rank, backend)


def teardown(ctx: Context) -> None:
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
