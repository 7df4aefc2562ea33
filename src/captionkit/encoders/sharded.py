"""Feature extraction spread over the processes of a distributed launch (torchrun, SLURM).

Each rank extracts its share of the images (every `world`-th one) into a store of its own; rank 0
then builds the store of all the images, which copies every row from those shard stores (the
incremental build of `features.extract_features`: unchanged images are never extracted twice)
and deletes them; the other ranks then open that store from the cache. So a COCO-sized
extraction scales with the number of GPUs, and its result is the store one process would make.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from captionkit.encoders.factory import ImageEncoder
from captionkit.encoders.features import FeatureStore, cached_store, extract_features


def launch_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process as torchrun or SLURM launched it;
    (0, 1, 0) when it was started alone."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    return rank, world, local


def extract_sharded(
    encoder: ImageEncoder,
    paths: list[Path],
    cache_dir: Path | None = None,
    grid: bool = True,
    device: str = "auto",
    **options,
) -> FeatureStore:
    """`extract_features` of `paths`, the work shared by the ranks of a distributed launch
    (alone: exactly `extract_features`). Every rank returns the complete store. With
    `device="auto"`, a rank uses the GPU of its local rank when there are GPUs."""
    rank, world, local = launch_world()
    if world == 1:
        return extract_features(encoder, paths, cache_dir, grid, device=device, **options)
    cached = cached_store(encoder, paths, cache_dir, grid, options.get("amp"))
    if cached is not None:  # every rank finds it: nothing to share
        return cached
    if device == "auto" and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
    import torch.distributed as dist

    # gloo: only barriers go through it, and it needs no GPU. SLURM without torchrun sets no
    # rendezvous address: the caller exports MASTER_ADDR / MASTER_PORT, as Lightning's docs say.
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        extract_features(
            encoder, paths[rank::world], cache_dir, grid, device=device, prune=False, **options
        )
        dist.barrier()
        if rank == 0:  # copies the shards' rows, then removes the shards it supersedes
            store = extract_features(encoder, paths, cache_dir, grid, device=device, **options)
        dist.barrier()
        if rank != 0:
            store = extract_features(encoder, paths, cache_dir, grid, device=device, **options)
    finally:
        dist.destroy_process_group()
    return store
