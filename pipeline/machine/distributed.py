"""Data-parallel training of one model on several processes (torch.distributed).

    torchrun --nproc-per-node 2 -m pipeline.train experiment=smoke objective=lm   # 2 ranks

A run started by `torchrun` (its WORLD_SIZE, RANK and LOCAL_RANK in the environment) trains one
model on every rank: NCCL between GPUs (rank r on cuda:LOCAL_RANK), gloo on the CPU. Every rank
builds the same global batch of `train.max_tokens` tokens and takes its share of the rows (every
size-th row, so the shares have the same mix of lengths); after backward the gradients are summed
across ranks in one flat all-reduce, each rank's loss having been scaled by its share of the
batch's predicted tokens, so that the update is the one a single process makes on the whole batch
(up to the order of floating-point sums). Rank 0 alone evaluates, writes the log, checkpoints,
snapshots and the finished model, and says when to stop; the other ranks follow its decisions.

Randomness that a single process draws for the whole batch (dropout, MLM masking, token dropout)
is drawn per rank from streams seeded by the seed and the rank, so a multi-rank run matches a
single-process one in distribution, and bit for bit where the objective draws nothing
(tests/unit/test_distributed.py).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one training run (size 1: no torch.distributed)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- collectives (no-ops for a single process) ------------------------------------------------

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        if self.distributed:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when `flag` is true on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        return bool(self.sum_(t).item() > 0)

    def from_main(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list | None:
        """Every rank's `value` as a list on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [value]
        out = [None] * self.size if self.main else None
        torch.distributed.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def shard(self, rows):
        """This rank's rows of a global batch: every size-th one, from its rank."""
        return rows[self.rank::self.size] if self.distributed else rows

    def sync_parameters(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (they are built from the same seed; this
        makes sure)."""
        if self.distributed:
            for t in (*model.parameters(), *model.buffers()):
                torch.distributed.broadcast(t.data, src=0)

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient over the ranks in one flat all-reduce (a parameter a rank
        did not reach counts as zero there)."""
        if not self.distributed:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sum_(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            chunk = flat[offset:offset + n].view_as(g)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += n


SINGLE = World()


def world_from_env() -> World:
    """The world torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), or a single
    process when WORLD_SIZE is unset or 1."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise PipelineError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size:
        raise PipelineError(f"RANK={rank} is not a rank of WORLD_SIZE={size}")
    return World(rank, size, local)


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group of `world` (gloo on the CPU, NCCL on CUDA) and return this rank's device
    (cuda:LOCAL_RANK on CUDA). A single process joins nothing and keeps `device`."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise PipelineError(f"LOCAL_RANK={world.local_rank}, but this node has {torch.cuda.device_count()} "
                                "CUDA devices: start at most that many ranks per node (torchrun --nproc-per-node)")
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(minutes=60))
    return device


def close(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
