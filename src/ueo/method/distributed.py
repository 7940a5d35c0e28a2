"""torch.distributed, as torchrun sets it up: rank and world, joining the process group from the
environment, gathering rows with gradients, averaged gradients, and "does any rank want to stop".

Everything here is a no-op on a single process.
"""

from __future__ import annotations

import os

import torch


def rank_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed; (0, 1) when it is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0 (or no torch.distributed): the one process that prints and writes outputs. Before the process
    group exists, torchrun's RANK variable tells."""
    rank, world = rank_world()
    return rank == 0 if world > 1 else int(os.environ.get("RANK", "0")) == 0


def init_from_environment(device: str | None) -> str | None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPUs) and return this
    rank's device. Otherwise return ``device`` unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return device or "cpu"


def gather_rows(local: torch.Tensor, counts: list[int], differentiable: bool) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order. Ranks may hold different row counts (``counts``).
    With ``differentiable`` the gradient flows back to each rank's own rows."""
    _, world = rank_world()
    if world == 1:
        return local
    width = max(counts)
    padded = torch.cat([local, local.new_zeros((width - len(local),) + tuple(local.shape[1:]))])
    if differentiable:
        from torch.distributed.nn.functional import all_gather  # the gather that passes gradients back

        parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def average_gradients(params: list[torch.Tensor]) -> None:
    """Mean of each gradient over the ranks (each rank's gradient holds world x its rows' share)."""
    _, world = rank_world()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank's flag is True (so that all ranks stop at the same step)."""
    _, world = rank_world()
    if world == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)  # NCCL reduces CUDA tensors only
    torch.distributed.all_reduce(value)
    return bool(value.item() > 0)


def rank_indices(num_samples: int) -> list[int]:
    """The samples this rank scores in an evaluation: every world-th, from its rank."""
    rank, world = rank_world()
    return list(range(rank, num_samples, world))


def gather_in_order(values: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Undo :func:`rank_indices`: every rank's rows gathered, back in dataset order."""
    _, world = rank_world()
    if world == 1:
        return values
    counts = [len(range(r, num_samples, world)) for r in range(world)]
    gathered = gather_rows(values, counts, differentiable=False)
    order = torch.tensor([i for r in range(world) for i in range(r, num_samples, world)], device=gathered.device)
    return gathered[torch.argsort(order)]
