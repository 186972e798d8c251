"""Training: one flat loop for VQ-VAE / VQ-GAN / CVQ, with or without language guidance.

What the loop takes from its neighbours: the checked config (``config_checks``), the Run
(``run``), the data order (``batches``), the torchrun wrappers (``distributed``), the opened
run folder (``resume``) and its checkpoints (``checkpoint``).

    lgvq train --config configs/shapes-vqvae-lg.yaml --set train.steps=500
    torchrun --nproc_per_node 2 -m lgvq train --config configs/shapes-vqvae.yaml

Under torchrun every rank trains on its slice of each global batch (data.batch_size per
rank). The training step calls the modules through DistributedDataParallel, whose bucketed
all-reduce of the gradients overlaps the backward; the quantizers all-reduce their own
statistics inside their forward. All ranks keep identical weights; rank 0 alone logs and
checkpoints. Multi-node launches: docs/design.md, "Distributed training".

Each step: autoencoder forward → reconstruction + codebook (+ LPIPS + GAN) loss
(+ LanguageGuidance losses on z_q) → one optimizer step; then, once the discriminator is
on, a discriminator step. Logs go to ``metrics.jsonl`` and TensorBoard, reconstruction
grids to ``images/``, checkpoints to ``checkpoints/`` (atomic; ``resume=True`` continues
bit-for-bit: same weights, optimizer states, RNG states and data order).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist

from lgvq.data import load_dataset
from lgvq.experiment.batches import batches_from
from lgvq.experiment.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from lgvq.experiment.config import ConfigError, ExperimentConfig, config_to_dict
from lgvq.experiment.config_checks import check_training_config
from lgvq.experiment.distributed import data_parallel, init_distributed
from lgvq.experiment.logger import RunLogger, as_floats
from lgvq.experiment.lr_schedule import set_lr
from lgvq.experiment.resume import open_run_folder, resume_checkpoint
from lgvq.experiment.run import Run, build_run, resolve_device, seed_everything
from lgvq.experiment.run_folder import RunFolderLock
from lgvq.experiment.splits import dataset_args
from lgvq.experiment.visualize import save_image_grid
from lgvq.extras import needs_extra
from lgvq.text.cache import encode_ahead
from lgvq.text.table import attach_caption_table, training_captions

with needs_extra("train"):
    from tqdm import tqdm


def make_optimizers(run: Run) -> dict[str, torch.optim.Optimizer]:
    optim = run.config.optim
    global_batch = run.config.data.batch_size * run.world  # taming scales by ngpu × batch
    lr = optim.base_lr * global_batch if optim.scale_lr else optim.base_lr
    params = [p for p in run.model.parameters() if p.requires_grad]
    if run.guidance is not None:
        params += list(run.guidance.parameters())
    optimizers = {"ae": adam(params, lr=lr, betas=tuple(optim.betas))}
    if run.loss.discriminator is not None:
        optimizers["disc"] = adam(run.loss.discriminator.parameters(), lr=lr, betas=tuple(optim.betas))
    for optimizer in optimizers.values():  # the lr schedule's lr₀ (lgvq.experiment.lr_schedule)
        for group in optimizer.param_groups:
            group["initial_lr"] = lr
    return optimizers


def adam(params, *, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """torch's Adam, fused into one kernel per parameter when every parameter is on the CPU.

    Same algorithm, float rounding aside. Torch's default on the CPU is its single-tensor
    loop, about ten small ops per parameter (an LG model has 211 parameters); elsewhere
    torch's default (foreach on CUDA) is kept. The choice is saved in the state_dict's param
    groups, so a resumed run keeps the path it started with.
    """
    params = list(params)
    on_cpu = all(p.device.type == "cpu" for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True if on_cpu else None)


def autocast(run: Run):
    if run.device.type == "cuda" and run.config.train.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(run: Run, optimizers, images: torch.Tensor, captions: list[str], step: int) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the scalars worth logging, as detached 0-dim tensors.

    They stay on the device: reading them (``lgvq.experiment.logger.as_floats``) is a device→host sync,
    which the loop pays at logging steps only.
    """
    run.model.train()
    with autocast(run):
        out = run.replica("model")(images)
        ae_loss, logs = run.loss.generator_loss(out.vq_loss, images, out.x_rec, step, run.model.get_last_layer())
        if run.guidance is not None:
            guided = run.replica("guidance")(out.z_q, captions)
            ae_loss = ae_loss + guided.loss
            logs.update({"train/gsa": guided.gsa, "train/mtp": guided.mtp, "train/ras": guided.ras})
    optimizers["ae"].zero_grad(set_to_none=True)
    ae_loss.backward()  # under DDP the gradients are averaged over ranks as they are computed
    if run.config.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizers["ae"].param_groups for p in g["params"]], run.config.optim.grad_clip
        )
    optimizers["ae"].step()
    if "disc" in optimizers and run.loss.disc_factor_at(step) > 0:
        with autocast(run):
            # taming's call: optimizer_idx 1 is the discriminator loss (through DDP's forward)
            d_loss, d_logs = run.replica("loss")(None, images, out.x_rec.detach(), 1, step)
        optimizers["disc"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["disc"].step()
        logs.update(d_logs)
    logs.update({"train/perplexity": out.perplexity, "train/usage": out.usage})
    return {k.split("/", 1)[1]: v.detach() for k, v in logs.items()}


def check_enough_data(items: int, config: ExperimentConfig, world: int) -> None:
    """A ConfigError, before anything is written, when the dataset holds less than one global batch."""
    if items >= config.data.batch_size * world:
        return
    where = f" in {config.data.root}" if config.data.root else ""
    ranks = f" on each of {world} ranks" if world > 1 else ""
    raise ConfigError(f"data.batch_size={config.data.batch_size} is not allowed: the {config.data.name} data{where} "
                      f"holds {items} image(s), fewer than one batch{ranks}; lower data.batch_size")


class TrainingDiverged(ValueError):
    """A logged training scalar is NaN or infinite; the message names the step and the scalars."""


def stop_if_diverged(step: int, values: dict[str, float], config: ExperimentConfig) -> None:
    """Raise TrainingDiverged when a logged value is not finite.

    Only logging steps read the scalars back (a device→host sync), so a divergence is caught
    at the first logging step at or after it: within ``train.log_every`` steps.
    """
    bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise TrainingDiverged(
            f"training diverged by step {step} ({', '.join(bad)}; logged every {config.train.log_every} steps); "
            f"no checkpoint was written after it: lower optim.base_lr (now {config.optim.base_lr}) or set "
            "optim.grad_clip, and start again"
        )


@torch.no_grad()
def save_reconstructions(run: Run, images: torch.Tensor, path: Path) -> None:
    was_training = run.model.training
    run.model.eval()
    with autocast(run):
        rec = run.model(images).x_rec
    run.model.train(was_training)
    save_image_grid([images, rec.float()], path)


def train(config: ExperimentConfig, resume: bool = False, progress: bool = True, existing: str = "refuse") -> Run:
    """Train ``config`` into ``config.train.out_dir``; returns the trained Run.

    ``resume`` continues from the latest checkpoint. A single-process resume is bit-exact; a
    resume under torchrun (with any world size) restores weights, optimizer states and the
    data position, while the ranks' RNG streams restart from rank 0's saved state.
    ``existing``: what a fresh run does with a run already in the folder: "refuse"
    (RunFolderError), "archive" (moved to ``<out_dir>/archive/<UTC time>/``) or "overwrite".
    The folder is locked while training: a second trainer on it is refused (lgvq.experiment.run_folder).
    """
    if resume and existing != "refuse":
        raise ValueError(f"resume continues the run in the folder; existing={existing!r} is for fresh runs only")
    check_training_config(config)
    rank, world = init_distributed(resolve_device(config.train.device))
    if rank != 0:  # rank 0 owns the folder; the others only read its checkpoints
        return _train(config, resume, progress, existing, rank, world)
    with RunFolderLock(config.train.out_dir):
        return _train(config, resume, progress, existing, rank, world)


def _train(config: ExperimentConfig, resume: bool, progress: bool, existing: str, rank: int, world: int) -> Run:
    out_dir = Path(config.train.out_dir)
    lead = rank == 0
    ckpt_dir = out_dir / "checkpoints"
    if lead:
        checkpoint = open_run_folder(config, resume, existing)
    else:
        checkpoint = resume_checkpoint(ckpt_dir) if resume else None
    seed_everything(config.train.seed)  # identical initial weights on every rank
    run = build_run(config)
    run.world = world
    seed_everything(config.train.seed + rank)  # ranks draw different dropout and masks
    dataset = load_dataset(**dataset_args(config, config.data.split, config.data.size))
    check_enough_data(len(dataset), config, world)
    if run.guidance is not None and config.guidance.cache_dir is not None:  # rank 0 builds, every rank reads
        attach_caption_table(run.guidance.text_encoder, training_captions(dataset), config.guidance.cache_dir)
    optimizers = make_optimizers(run)
    step = 0
    if checkpoint is not None:
        step = load_checkpoint(checkpoint, run.modules(), optimizers)["step"]
    if lead:  # only once the checkpoint has loaded: a refused resume leaves the folder as it was
        atomic_write_text(out_dir / "config.json", json.dumps(config_to_dict(config), indent=2))
    if world > 1:
        run.replicas = data_parallel(run)
    preview = torch.stack([dataset[i]["image"] for i in range(min(8, len(dataset)))]).to(run.device)
    logger = RunLogger(out_dir, tensorboard=config.train.tensorboard, enabled=lead, start_step=step)
    batches = batches_from(dataset, config, step, rank, run.world)
    if run.guidance is not None:
        batches = encode_ahead(batches, run.guidance.text_encoder)  # first-epoch captions in whole chunks
    bar = tqdm(total=config.train.steps, initial=step, disable=not (progress and lead), desc=f"train {out_dir.name}",
               dynamic_ncols=True)
    try:
        while step < config.train.steps:
            images, captions = next(batches)
            set_lr(optimizers, config, step)
            logs = train_step(run, optimizers, images.to(run.device), captions, step)
            logs["lr"] = optimizers["ae"].param_groups[0]["lr"]
            step += 1
            bar.update(1)
            last = step == config.train.steps
            if lead and (step % config.train.log_every == 0 or last):
                values = as_floats(logs)  # the loop's only read of the step's scalars: checked here
                logger.log(step, values)
                stop_if_diverged(step, values, config)
                bar.set_postfix(nll=f"{values['nll_loss']:.3f}", ppl=f"{values['perplexity']:.0f}")
            if lead and (step % config.train.image_every == 0 or last):
                save_reconstructions(run, preview, out_dir / "images" / f"step_{step:08d}.png")
            if step % config.train.ckpt_every == 0 or last:
                if lead:
                    save_checkpoint(ckpt_dir, step, run.modules(), optimizers, {"config": config_to_dict(config)})
                if run.world > 1:
                    dist.barrier()  # no rank runs ahead of a checkpoint it might need to resume from
    finally:
        bar.close()
        logger.close()
    return run
