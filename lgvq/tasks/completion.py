"""Image completion: keep the upper rows of a code grid and let an AR transformer write the rest.

Any ``CodeTransformer`` completes (an unconditional one, or a text-to-image one with the
caption as condition): raster order means the given rows are exactly a code prefix.
"""

from __future__ import annotations

import torch

from lgvq.tasks.autoregressive import CodeTransformer, Sampling
from lgvq.tasks.codes import check_code_indices
from lgvq.tasks.text_features import TextFeatures


def given_rows_or_half(grid: tuple[int, int], given_rows: int | None) -> int:
    """The number of kept code rows: ``given_rows``, by default the upper half."""
    if given_rows is None:
        return grid[0] // 2
    if isinstance(given_rows, bool) or not isinstance(given_rows, int):
        raise TypeError(f"given_rows must be an int, got {type(given_rows).__name__}")
    if not 0 <= given_rows <= grid[0]:
        raise ValueError(f"given_rows must be in [0, {grid[0]}], got {given_rows}")
    return given_rows


def complete(
    transformer: CodeTransformer,
    indices: torch.Tensor,
    *,
    given_rows: int | None = None,
    condition: TextFeatures | None = None,
    sampling: Sampling = Sampling(),
    seed: int = 0,
) -> torch.Tensor:
    """(B, h, w) indices whose first ``given_rows`` rows (default h // 2) are those of
    ``indices`` and whose remaining rows are sampled."""
    indices = check_code_indices("indices", indices, transformer.n_embed, transformer.grid)
    rows = given_rows_or_half(transformer.grid, given_rows)
    prefix = indices[:, :rows].flatten(1)
    return transformer.sample(
        len(indices), condition=condition, prefix=prefix, sampling=sampling, seed=seed
    )
