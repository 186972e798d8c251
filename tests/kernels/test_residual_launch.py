"""The fused residual kernel's config prune: which tiles each architecture may launch (the
spill-free ones the compile gate found)."""

import pytest

pytest.importorskip("triton")

from lgvq.kernels import residual  # noqa: E402
from lgvq.kernels.nearest import SHARED_MEMORY_LIMIT  # noqa: E402

ALL = [residual._config(t) for t in residual.FP32_TILES + residual.HALF_TILES]


def tiles(block_d, elem_size, precision, arch):
    kept = residual.launchable_configs(ALL, block_d, elem_size, precision, SHARED_MEMORY_LIMIT[arch], arch)
    return [residual._tile(c) for c in kept]


def test_split_tf32_rows_of_128_take_32_row_tiles_before_hopper():
    """3xTF32 on sm_80 holds both split operands in registers: 64 rows of d = 128 spilled there;
    sm_90 (wgmma) keeps the 64-row tiles, and plain TF32 is unchanged."""
    assert tiles(128, 4, "tf32x3", 80) == [residual.FP32_FALLBACK_TILE]
    assert tiles(128, 4, "tf32x3", 90) == [(64, 32, 8, 3), (64, 32, 8, 2)]
    assert tiles(128, 4, "tf32", 80) == [(64, 32, 8, 3), (64, 32, 8, 2)]
    assert tiles(64, 4, "tf32x3", 80) == [(64, 32, 8, 3), (64, 32, 8, 2)]


def test_half_precision_tiles_fit_the_resident_budget():
    assert tiles(128, 2, "ieee", 80) == [(64, 64, 8, 3), (32, 64, 4, 3)]
