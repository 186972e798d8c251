"""Data-parallel training under torchrun: joining the process group and wrapping a Run's modules."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lgvq.experiment.run import Run


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group (gloo on CPU, NCCL on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def data_parallel(run: Run) -> dict[str, torch.nn.Module]:
    """DistributedDataParallel wrappers of the trained modules, by ``Run.modules()`` name.

    * The model's buffers are the quantizer's statistics, which it all-reduces itself inside
      its forward: DDP must not overwrite them with rank 0's (``broadcast_buffers=False``).
    * taming's adaptive GAN weight takes ``torch.autograd.grad`` of two losses at the decoder's
      last layer inside the generator loss. That needs no change: ``autograd.grad`` returns
      the gradients without running the parameters' gradient accumulators, where DDP's
      reducer hooks sit, so only the one ``backward`` of the step is all-reduced.
    * The loss module is wrapped for the discriminator step only (its forward with
      ``optimizer_idx=1``). The generator loss calls the bare module: the discriminator's
      gradients from that backward are local, never reduced, and discarded before the
      discriminator step, as in a single process. Its BatchNorm statistics come from rank 0
      at every discriminator step (DDP's buffer broadcast).
    """
    device_ids = [run.device.index] if run.device.type == "cuda" else None
    replicas = {"model": DistributedDataParallel(run.model, device_ids=device_ids, broadcast_buffers=False)}
    if run.guidance is not None:
        replicas["guidance"] = DistributedDataParallel(run.guidance, device_ids=device_ids)
    if run.loss.discriminator is not None:
        replicas["loss"] = DistributedDataParallel(run.loss, device_ids=device_ids)
    return replicas
