"""The nearest launcher's own state and bounds, in the interpreter: the split count it reduces
over is the one its launch ran with, and the documented argmin tolerance."""

import pytest
import torch

pytest.importorskip("triton")

from lgvq.kernels import nearest  # noqa: E402


def reference(x, e):
    dist = (e.double().pow(2).sum(1) - 2 * x.double() @ e.double().t())
    return dist.min(1)


@pytest.mark.triton
def test_reduction_uses_the_launch_own_split_count(monkeypatch):
    """Another search finishing between this launch and its reduction (another thread or
    stream) sets the autotuner's best_config to a config with another split count; the
    reduction must still cover every split this launch wrote."""
    monkeypatch.setattr(nearest, "_sm_count_of", lambda device: 4)  # automatic splits on the CPU
    tuner = nearest._nearest_kernel
    other = nearest._config((64, 64, 4, 2, 0, 0))
    launch = tuner.run

    def launch_then_another_search_finishes(*args, **kwargs):
        out = launch(*args, **kwargs)
        monkeypatch.setattr(tuner, "best_config", other)
        return out

    monkeypatch.setattr(tuner, "run", launch_then_another_search_finishes)
    gen = torch.Generator().manual_seed(0)
    x, e = torch.randn(20, 16, generator=gen), torch.randn(300, 16, generator=gen)
    e[250:] *= 0.2  # codes near the origin, in the last split, win many rows
    n, k = x.shape[0], e.shape[0]
    tile = nearest.INTERPRET_TILE
    assert nearest.auto_splits(n, k, tile[0], tile[1], 4) != nearest.auto_splits(n, k, 64, 64, 4)
    score, index = nearest.nearest_code_search(x, e, e.pow(2).sum(1))
    best, want = reference(x, e)
    assert (want >= 250).any()
    assert torch.equal(index, want)
    assert torch.allclose(score.double(), best, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_tolerance_counts_tensor_core_truncation(dtype):
    """16-bit products are summed on tensor cores with truncation: the unit roundoff of the
    bound is 2^-23 (one ulp of fp32), twice IEEE fp32's rounding 2^-24."""
    gen = torch.Generator().manual_seed(1)
    x, e = torch.randn(5, 24, generator=gen).to(dtype), torch.randn(7, 24, generator=gen).to(dtype)
    half = nearest.argmin_tolerance(x, e, "ieee")
    single = nearest.argmin_tolerance(x.float(), e.float(), "ieee")
    assert torch.allclose(half, 2 * single)
    e_norm = e.double().norm(dim=1).max()
    assert torch.allclose(half, 2 * 26 * 2.0**-23 * (e_norm**2 + 2 * x.double().norm(dim=1) * e_norm))


@pytest.mark.triton
@pytest.mark.parametrize("biased,schedule", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("n,k,d,splits", [(1, 5, 3, 1), (37, 70, 20, 1), (37, 70, 40, 3), (20, 33, 8, 4),
                                          (5, 100, 300, 1)])
def test_every_epilogue_and_schedule_finds_the_nearest_code(monkeypatch, biased, schedule, n, k, d, splits):
    """The plain (min of |e|² - 2x·e) and the short (max of x·e - |e|²/2, from a biased
    accumulator) epilogues, under the pipelined and the register-prefetch schedule: K not a
    multiple of the tile (the prefetch past the last tile reads nothing), empty trailing
    splits, one row, d not a power of two, a d wide enough for the tiled loop (300, where the
    schedule does not apply), and ties (duplicated codes resolve to the lowest index)."""
    tuner = nearest._nearest_kernel
    tile = nearest.INTERPRET_TILE[:4] + (biased, schedule)
    monkeypatch.setattr(tuner, "configs", [nearest._config(tile)])
    monkeypatch.setattr(tuner, "cache", {})
    gen = torch.Generator().manual_seed(n + k + d)
    # small integers: every product and sum is exact, so a tie stays a tie whatever order a
    # matmul adds in (with random floats, numpy's BLAS in the interpreter and the reference's
    # give identical codes at different positions different last bits on some CPUs)
    x, e = (torch.randint(-4, 5, (rows, d), generator=gen).float() for rows in (n, k))
    e[k // 2:] = e[: k - k // 2].clone()  # every code of the second half ties with one of the first
    score, index = nearest.nearest_code_search(x, e, e.pow(2).sum(1), num_splits=splits)
    best, want = reference(x, e)
    assert torch.equal(index, want)
    assert torch.allclose(score.double(), best, atol=1e-4)
