"""Training: one flat loop for VQ-VAE / VQ-GAN / CVQ, with or without language guidance.

    lgvq train --config configs/shapes-vqvae-lg.yaml --set train.steps=500
    torchrun --nproc_per_node 2 -m lgvq.train --config configs/shapes-vqvae.yaml

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
import dataclasses
import inspect
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lgvq.checkpoint import (
    atomic_write_text,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from lgvq.config import ConfigError, DataConfig, ExperimentConfig, check_config, config_from_dict, config_to_dict
from lgvq.data import DATASET_NAMES, FORMATS, collate, load_dataset
from lgvq.data.shapes import SPLITS as SHAPES_SPLITS
from lgvq.extras import needs_extra
from lgvq.guidance import LanguageGuidance
from lgvq.logger import RunLogger, as_floats
from lgvq.models.losses import VQLPIPSWithDiscriminator
from lgvq.models.registry import build_loss, build_model, get_spec
from lgvq.models.vqmodel import VQModelConfig
from lgvq.run_folder import RunFolderError, RunFolderLock, check_resume_config, clear_for_fresh_run
from lgvq.text.cache import encode_ahead
from lgvq.text.table import attach_caption_table, training_captions
from lgvq.visualize import save_image_grid

with needs_extra("train"):
    from tqdm import tqdm


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per torchrun rank
    return torch.device(name)


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


class StepBatches(torch.utils.data.Sampler):
    """Batches of indices addressed by global step: epoch e is a permutation seeded by
    (seed, e), cut into full global batches of ``batch_size × world``; rank r takes the r-th
    slice. Starting at any step reproduces the same order, which is what makes resume exact
    without saving sampler state."""

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, start: int = 0,
                 rank: int = 0, world: int = 1):
        if num_items < batch_size * world:
            raise ValueError(f"the dataset has {num_items} items, fewer than one batch of {batch_size * world}")
        self.num_items, self.batch_size, self.seed, self.epoch, self.start = num_items, batch_size, seed, epoch, start
        self.rank, self.world = rank, world

    @staticmethod
    def per_epoch(num_items: int, global_batch: int) -> int:
        return num_items // global_batch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=gen).tolist()
        for b in range(self.start, len(self)):
            first = (b * self.world + self.rank) * self.batch_size
            yield order[first:first + self.batch_size]

    def __len__(self) -> int:
        return self.per_epoch(self.num_items, self.batch_size * self.world)


def batches_from(dataset, config: ExperimentConfig, step: int, rank: int = 0, world: int = 1):
    """Yield this rank's (images, captions) forever, starting at global ``step``."""
    per_epoch = StepBatches.per_epoch(len(dataset), config.data.batch_size * world)
    epoch, offset = divmod(step, per_epoch)
    while True:
        dataset.set_epoch(epoch)  # before the loader copies the dataset into its workers
        sampler = StepBatches(len(dataset), config.data.batch_size, config.train.seed, epoch, offset, rank, world)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.num_workers,
            generator=torch.Generator().manual_seed(config.train.seed),  # keeps the global RNG untouched
        )
        for batch in loader:
            yield batch["image"], batch["caption"]
        epoch, offset = epoch + 1, 0


@dataclass
class Run:
    """Everything a loop (training or evaluation) needs, built from one config."""

    config: ExperimentConfig
    device: torch.device
    model: torch.nn.Module
    loss: torch.nn.Module
    guidance: LanguageGuidance | None
    world: int = 1  # data-parallel ranks
    # DistributedDataParallel wrappers under torchrun (data_parallel), by modules() name. The
    # training step calls them; checkpoints, evaluation and the optimizers use the bare modules.
    replicas: dict[str, torch.nn.Module] = field(default_factory=dict)

    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {"model": self.model, "loss": self.loss}
        if self.guidance is not None:
            mods["guidance"] = self.guidance
        return mods

    def replica(self, name: str) -> torch.nn.Module:
        """The module ``name`` as a training step calls it: its DDP wrapper when there is one."""
        return self.replicas.get(name, self.modules()[name])


def build_run(config: ExperimentConfig) -> Run:
    """Model, loss and (optional) guidance for ``config``, on its device."""
    device = resolve_device(config.train.device)
    model = build_model(config.model.name, **config.model.overrides)
    loss = build_loss(config.model.name, **config.model.loss)
    guidance = None
    if config.guidance.enabled:
        from lgvq.text import load_text_encoder

        encoder = load_text_encoder(
            config.guidance.text_encoder, max_length=config.guidance.max_length, cache=config.guidance.cache_captions
        )
        guidance = LanguageGuidance(
            model.config.embed_dim, model.config.latent_size, encoder,
            weights=tuple(config.guidance.weights), temperature=config.guidance.temperature,
            mtp_input=config.guidance.mtp_input, flavour=config.guidance.flavour, backend=model.config.backend,
        )
    run = Run(config, device, model, loss, guidance)
    for module in run.modules().values():
        module.to(device)
    return run


def make_optimizers(run: Run) -> dict[str, torch.optim.Optimizer]:
    optim = run.config.optim
    global_batch = run.config.data.batch_size * run.world  # taming scales by ngpu × batch
    lr = optim.base_lr * global_batch if optim.scale_lr else optim.base_lr
    params = [p for p in run.model.parameters() if p.requires_grad]
    if run.guidance is not None:
        params += list(run.guidance.parameters())
    optimizers = {"ae": torch.optim.Adam(params, lr=lr, betas=tuple(optim.betas))}
    if run.loss.discriminator is not None:
        optimizers["disc"] = torch.optim.Adam(run.loss.discriminator.parameters(), lr=lr, betas=tuple(optim.betas))
    return optimizers


def autocast(run: Run):
    if run.device.type == "cuda" and run.config.train.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(run: Run, optimizers, images: torch.Tensor, captions: list[str], step: int) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the scalars worth logging, as detached 0-dim tensors.

    They stay on the device: reading them (``lgvq.logger.as_floats``) is a device→host sync,
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
    The folder is locked while training: a second trainer on it is refused (lgvq.run_folder).
    """
    if resume and existing != "refuse":
        raise ValueError(f"resume continues the run in the folder; existing={existing!r} is for fresh runs only")
    check_training_config(config)
    rank, world = init_distributed(resolve_device(config.train.device))
    if rank != 0:  # rank 0 owns the folder; the others only read its checkpoints
        return _train(config, resume, progress, existing, rank, world)
    with RunFolderLock(config.train.out_dir):
        return _train(config, resume, progress, existing, rank, world)


def resume_checkpoint(ckpt_dir: Path) -> Path:
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    return latest


def open_run_folder(config: ExperimentConfig, resume: bool, existing: str) -> Path | None:
    """Ready the locked run folder: the checkpoint to resume from, or None for a fresh run.

    Every refusal comes before anything is written; the only changes are the removal of
    temporaries that interrupted runs left, and the archive or overwrite asked for.
    """
    out_dir = Path(config.train.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    remove_stale_temporaries(ckpt_dir)  # safe: the lock keeps every other writer out
    if not resume:
        clear_for_fresh_run(out_dir, existing)
        return None
    checkpoint = resume_checkpoint(ckpt_dir)
    saved = out_dir / "config.json"
    if saved.is_file():
        check_resume_config(config_to_dict(config_from_dict(json.loads(saved.read_text()))), config_to_dict(config),
                            saved)
    step = checkpoint_step(checkpoint)
    if config.train.steps < step:
        raise RunFolderError(
            f"train.steps={config.train.steps} is before the checkpoint {checkpoint} (step {step}); "
            f"a resume trains up to train.steps, so it must be >= {step}"
        )
    return checkpoint


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
            logs = train_step(run, optimizers, images.to(run.device), captions, step)
            step += 1
            bar.update(1)
            last = step == config.train.steps
            if lead and (step % config.train.log_every == 0 or last):
                values = as_floats(logs)
                logger.log(step, values)
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


def dataset_splits(name: str) -> tuple[str, ...]:
    return SHAPES_SPLITS if name == "shapes" else FORMATS[name].splits


def held_out_split(name: str) -> str:
    """The split evaluation uses by default: val or test, or the only split a folder has."""
    splits = dataset_splits(name)
    return next((s for s in ("val", "test") if s in splits), splits[0])


def check_split(key: str, name: str, split: str) -> None:
    splits = dataset_splits(name)
    if split not in splits:
        hint = " (a folder has no splits: point data.root at each split's folder)" if name == "folder" else ""
        raise ConfigError(f"{key}={split!r} is not a split of {name} data: must be one of {', '.join(splits)}{hint}")


def check_data_config(data: DataConfig) -> None:
    """The dataset format is known, its root given and present, its splits exist."""
    if data.name not in DATASET_NAMES:
        raise ConfigError(f"data.name={data.name!r} is not a known dataset format: must be one of "
                          f"{', '.join(DATASET_NAMES)}")
    if data.name == "shapes" and data.root is not None:
        raise ConfigError(f"data.root={data.root!r} is not allowed with data.name=shapes (generated data): leave it unset")
    if data.name != "shapes":
        if data.root is None:
            raise ConfigError(f"data.root is not set: data.name={data.name} needs the dataset folder")
        if not Path(data.root).is_dir():
            raise ConfigError(f"data.root={data.root!r} does not exist: must be the folder of a {data.name} dataset "
                              "(layouts: README 'Your own images', lgvq/data/formats.py)")
    check_split("data.split", data.name, data.split)
    if data.eval_split is not None:
        check_split("data.eval_split", data.name, data.eval_split)


def model_config(config: ExperimentConfig) -> VQModelConfig:
    """The VQModelConfig that ``model.name`` and ``model.overrides`` describe (ConfigError if none)."""
    spec = get_spec(config.model.name)
    try:
        return spec.model.replace(**config.model.overrides)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.overrides={config.model.overrides!r} is not allowed: {error}") from error


def check_training_config(config: ExperimentConfig) -> None:
    """Everything a training run needs from ``config``, checked before anything is built or written."""
    check_config(config)
    model = model_config(config)
    if config.data.image_size != model.image_size:
        raise ConfigError(
            f"data.image_size={config.data.image_size} does not fit the model: {config.model.name} takes "
            f"{model.image_size}x{model.image_size} images (set data.image_size={model.image_size}, or "
            f"model.overrides={{image_size: {config.data.image_size}}})"
        )
    loss_args = set(inspect.signature(VQLPIPSWithDiscriminator).parameters)
    unknown = sorted(set(config.model.loss) - loss_args)
    if unknown:
        raise ConfigError(f"model.loss has unknown key(s) {', '.join(unknown)}: must be among {', '.join(sorted(loss_args))}")
    check_data_config(config.data)


def dataset_args(config: ExperimentConfig, split: str | None, size: int) -> dict:
    """load_dataset arguments for ``split`` of the config's data (None: ``held_out_split``)."""
    data = config.data
    split = held_out_split(data.name) if split is None else split
    args = dict(name=data.name, root=data.root, split=split, image_size=data.image_size,
                caption_mode=data.caption_mode, skip_bad=data.skip_bad, seed=config.train.seed)
    if data.name == "shapes":
        args["size"] = size
    return args


def config_with(config: ExperimentConfig, **sections) -> ExperimentConfig:
    """A copy of ``config`` with whole fields of sections replaced: config_with(c, train={"steps": 5})."""
    replaced = {name: dataclasses.replace(getattr(config, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(config, **replaced)


if __name__ == "__main__":  # torchrun --nproc_per_node N -m lgvq.train --config ... [--set ...] [--resume]
    import sys

    from lgvq.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
