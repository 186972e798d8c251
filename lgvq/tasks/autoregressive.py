"""The autoregressive code transformer behind text-to-image, unconditional generation and
completion, and the sampling rules it generates with.

Codes are predicted in raster order. A condition (caption word features) is a *prefix*:
its projected words are placed before a learned start token in one causal sequence. Why a
prefix rather than cross-attention: the unconditional model is then literally the same
network with an empty prefix (no cross-attention weights left unused), completion is the
same thing with given codes appended to the prefix, and taming's conditional transformer,
which the LG-VQ release builds on, conditions the same way. With <= 30 words before 64
codes the longer self-attention costs little.

A condition given per code cell (a semantic layout pooled onto the code grid) is instead
*added* to the input token that predicts that cell's code, so cell j's condition meets code
j's prediction directly rather than through attention the network must first learn to aim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.tasks.codes import INDEX_DTYPES, CodeDataset, check_code_indices
from lgvq.tasks.layers import (
    CodeEmbedding,
    TransformerSize,
    causal_mask,
    encoder_stack,
    init_vector,
)
from lgvq.tasks.text_features import TextFeatures
from lgvq.tasks.training import TrainSettings, train_network


@dataclass(frozen=True)
class Sampling:
    """Temperature, then top-k, then top-p (nucleus) filtering of each code's distribution.
    ``top_k=1`` is greedy decoding."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        check_positive("temperature", self.temperature)
        if self.top_k is not None:
            check_positive("top_k", self.top_k)
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to -inf every logit outside the top k and outside the smallest set of most likely
    entries whose probability reaches top_p (the most likely entry always survives)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop an entry when the entries ranked above it already reach top_p
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator
) -> torch.Tensor:
    """One index per row of (B, K) logits."""
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


class CodeTransformer(nn.Module):
    """GPT over a (h, w) code grid in raster order, optionally prefixed by text features.

    ``forward(codes, condition)`` returns the distribution of every next code: given codes
    (B, m) it yields (B, m + 1, K) logits, row j predicting code j.
    """

    def __init__(
        self,
        codebook: torch.Tensor,
        grid: tuple[int, int],
        size: TransformerSize,
        condition_dim: int | None = None,
        cell_dim: int | None = None,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.num_codes = self.grid[0] * self.grid[1]
        self.codes = CodeEmbedding(codebook, self.num_codes, size.width)
        self.start = init_vector(size.width)
        # MiniLM / CLIP word features already encode word order, so no prefix positions
        self.condition = None if condition_dim is None else nn.Linear(condition_dim, size.width)
        self.cells = None if cell_dim is None else nn.Linear(cell_dim, size.width)
        self.blocks = encoder_stack(size)
        self.norm = nn.LayerNorm(size.width)
        self.head = nn.Linear(size.width, self.codes.n_embed)

    @property
    def n_embed(self) -> int:
        return self.codes.n_embed

    @property
    def conditional(self) -> bool:
        return self.condition is not None

    def _check_condition(self, condition: TextFeatures | None, batch_size: int) -> None:
        if self.conditional and condition is None:
            raise ValueError("this transformer is conditional: pass condition (TextFeatures)")
        if not self.conditional and condition is not None:
            raise ValueError("this transformer is unconditional: condition must be None")
        if condition is not None and len(condition) != batch_size:
            raise ValueError(f"condition has {len(condition)} rows for a batch of {batch_size}")

    def _check_cells(self, cells: torch.Tensor | None, batch_size: int) -> None:
        if (self.cells is None) != (cells is None):
            raise ValueError(
                "this transformer takes per-cell conditions: pass cells" if cells is None
                else "this transformer takes no per-cell conditions: cells must be None"
            )
        if cells is not None:
            check_tensor("cells", cells, ndim=3)
            expected = (batch_size, self.num_codes, self.cells.in_features)
            if tuple(cells.shape) != expected:
                raise ValueError(f"cells must have shape {expected}, got {tuple(cells.shape)}")

    def forward(self, codes: torch.Tensor, condition: TextFeatures | None = None,
                cells: torch.Tensor | None = None) -> torch.Tensor:
        batch, m = codes.shape
        inputs = torch.cat([self.start.expand(batch, -1, -1), self.codes(codes)], dim=1)
        if cells is not None:  # input j predicts code j: give it cell j's condition
            inputs = inputs + self.cells(cells[:, : m + 1])
        tokens = [inputs]
        padding = torch.zeros(batch, m + 1, dtype=torch.bool, device=codes.device)
        if condition is not None:
            tokens.insert(0, self.condition(condition.words))
            padding = torch.cat([~condition.mask, padding], dim=1)
        x = torch.cat(tokens, dim=1)
        x = self.blocks(x, mask=causal_mask(x.shape[1], x.device), src_key_padding_mask=padding)
        return self.head(self.norm(x[:, -(m + 1) :]))

    def loss(self, indices: torch.Tensor, condition: TextFeatures | None = None,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-code cross-entropy (nats) of (B, h, w) indices."""
        indices = check_code_indices("indices", indices, self.n_embed, self.grid)
        self._check_condition(condition, len(indices))
        self._check_cells(cells, len(indices))
        codes = indices.flatten(1)
        logits = self(codes[:, :-1], condition, cells)
        return F.cross_entropy(logits.flatten(0, 1), codes.flatten())

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        *,
        condition: TextFeatures | None = None,
        cells: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        sampling: Sampling = Sampling(),
        seed: int = 0,
    ) -> torch.Tensor:
        """(batch_size, h, w) indices; the first ``prefix.shape[1]`` raster codes are given."""
        check_positive("batch_size", batch_size)
        self._check_condition(condition, batch_size)
        self._check_cells(cells, batch_size)
        device = self.head.weight.device
        codes = torch.zeros(batch_size, 0, dtype=torch.int64, device=device)
        if prefix is not None:
            codes = self._check_prefix(prefix, batch_size).to(device)
        condition = None if condition is None else condition.to(device)
        cells = None if cells is None else cells.to(device)
        generator = torch.Generator(device).manual_seed(seed)
        was_training = self.training
        self.eval()
        while codes.shape[1] < self.num_codes:
            logits = self(codes, condition, cells)[:, -1].float()
            codes = torch.cat([codes, sample_next(logits, sampling, generator)[:, None]], dim=1)
        self.train(was_training)
        return codes.view(batch_size, *self.grid)

    def _check_prefix(self, prefix, batch_size: int) -> torch.Tensor:
        check_tensor("prefix", prefix, ndim=2, dtypes=INDEX_DTYPES, finite=False, nonempty=False)
        if prefix.shape[0] != batch_size or prefix.shape[1] > self.num_codes:
            raise ValueError(
                f"prefix must have shape ({batch_size}, m <= {self.num_codes}), "
                f"got {tuple(prefix.shape)}"
            )
        if prefix.shape[1] == 0:
            return prefix.long()
        return check_code_indices("prefix", prefix[:, None], self.n_embed)[:, 0]


def fit_autoregressive(
    transformer: CodeTransformer,
    codes: CodeDataset,
    settings: TrainSettings,
    condition: TextFeatures | None = None,
    cells: torch.Tensor | None = None,
) -> list[float]:
    """Teacher-forced training on ``codes`` (each row with its ``condition`` and ``cells`` row,
    if given)."""
    for name, given in (("condition", condition), ("cells", cells)):
        if given is not None and len(given) != len(codes):
            raise ValueError(f"{name} has {len(given)} rows for {len(codes)} code rows")
    device = transformer.head.weight.device

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        batch_condition = None if condition is None else condition.rows(rows).to(device)
        batch_cells = None if cells is None else cells[rows.to(cells.device)].to(device)
        return transformer.loss(codes.indices[rows].to(device), batch_condition, batch_cells)

    return train_network(transformer, batch_loss, len(codes), settings)
