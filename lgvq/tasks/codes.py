"""The frozen VQ model's side of every downstream task: a dataset's code indices, computed once.

Downstream models never see pixels: they read the indices a frozen VQ model assigns and the
codebook those indices point into. Encoding the dataset once up front means every task
trains on exactly the same codes, and a task's cost no longer includes the VQ encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from lgvq.checks import check_positive, check_tensor
from lgvq.data import collate

INDEX_DTYPES = (torch.int64, torch.int32)


@dataclass(frozen=True)
class CodeDataset:
    """Code indices of a captioned dataset under one frozen VQ model.

    indices: (N, h, w) int64 in [0, n_embed). captions: the caption each image was encoded
    with. dataset_indices: (N,) int64, the source dataset's index of each row, so ground
    truth (scenes, questions, all captions) can be looked up again.
    """

    indices: torch.Tensor
    captions: list[str]
    dataset_indices: torch.Tensor
    n_embed: int

    def __post_init__(self):
        check_code_indices("indices", self.indices, self.n_embed)
        if len(self.captions) != len(self.indices) or len(self.dataset_indices) != len(
            self.indices
        ):
            raise ValueError(
                f"captions ({len(self.captions)}) and dataset_indices ({len(self.dataset_indices)}) "
                f"must have one entry per row of indices ({len(self.indices)})"
            )

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.indices.shape[1:])


def check_code_indices(
    name: str, indices, n_embed: int, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Validate a (B, h, w) batch of code indices against a codebook size (and grid); int64."""
    check_tensor(name, indices, ndim=3, dtypes=INDEX_DTYPES, finite=False)
    if grid is not None and tuple(indices.shape[1:]) != tuple(grid):
        raise ValueError(
            f"{name} must have shape (B, {grid[0]}, {grid[1]}), got {tuple(indices.shape)}"
        )
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= n_embed:
        raise ValueError(f"{name} must lie in [0, {n_embed}), got values in [{low}, {high}]")
    return indices.long()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def frozen_codebook(model) -> torch.Tensor:
    """A detached copy of the VQ model's codebook (K, d): later VQ training cannot move it."""
    return model.quantize.codebook.detach().float().clone()


def code_grid(model) -> tuple[int, int]:
    side = model.config.latent_size
    return side, side


@torch.no_grad()
def encode_dataset(model, dataset, batch_size: int = 128) -> CodeDataset:
    """Encode every item of ``dataset`` with the frozen ``model`` (in eval mode: encoding must
    not update the quantizer's usage statistics or EMA codebook)."""
    check_positive("batch_size", batch_size)
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    was_training = model.training
    model.eval()
    device = model_device(model)
    indices, captions, dataset_indices = [], [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            indices.append(model.encode(batch["image"].to(device))[1].cpu())
            captions += batch["caption"]
            dataset_indices.append(batch["index"])
    finally:
        model.train(was_training)
    return CodeDataset(
        torch.cat(indices), captions, torch.cat(dataset_indices), model.config.n_embed
    )


@torch.no_grad()
def decode_codes(model, indices: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Images (B, C, H, W) on CPU from code indices, through the frozen VQ decoder."""
    indices = check_code_indices("indices", indices, model.config.n_embed, code_grid(model))
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        images = [
            model.decode_indices(chunk.to(device)).cpu() for chunk in indices.split(batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(images).clamp(-1, 1)
