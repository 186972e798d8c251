"""nearest_code: the Triton kernel against the torch reference, and the reference against
a dense float64 distance matrix computed here."""

import pytest
import torch
import torch.nn.functional as F

import lgvq.ops.backend as backend_mod
from lgvq.checks import strict_mode
from lgvq.ops import nearest_code

# (N, K, d): N = 1, K not a multiple of any tile, d = 3 / 17 / 300 (300 > one d tile).
SHAPES = [(1, 5, 3), (7, 45, 17), (33, 130, 300), (40, 257, 64)]


def dense_distances(x, codebook, metric):
    x, codebook = x.double().reshape(-1, x.shape[-1]), codebook.double()
    if metric == "cos":
        return 1 - F.normalize(x, dim=-1) @ F.normalize(codebook, dim=-1).t()
    return torch.cdist(x, codebook).pow(2)


def assert_optimal(idx, dist, x, codebook, metric, atol=1e-4):
    """The chosen codes are optimal within tolerance (ties may pick either index)."""
    full = dense_distances(x, codebook, metric)
    flat_idx = idx.reshape(-1)
    chosen = full.gather(1, flat_idx[:, None]).squeeze(1)
    best = full.min(dim=1).values
    scale = 1 + full.abs().max()
    assert torch.allclose(chosen, best, atol=atol * scale, rtol=0)
    assert torch.allclose(dist.reshape(-1).double(), best, atol=atol * scale, rtol=0)


@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_torch_reference_matches_dense(n, k, d, metric):
    x, codebook = torch.randn(n, d), torch.randn(k, d)
    idx, dist = nearest_code(x, codebook, metric, backend="torch")
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
    assert idx.shape == (n,) and dist.shape == (n,)
    assert_optimal(idx, dist, x, codebook, metric)


def test_torch_reference_blocks_rows():
    """A tiny block budget forces many row blocks; the answer must not change."""
    from lgvq.ops.nearest import search_torch

    x, codebook = torch.randn(50, 8), torch.randn(20, 8)
    norms = codebook.pow(2).sum(1)
    whole = search_torch(x, codebook, norms)
    blocked = search_torch(x, codebook, norms, block_bytes=20 * 4 * 3)  # three rows a block
    assert torch.equal(whole[1], blocked[1])
    assert torch.allclose(whole[0], blocked[0], atol=1e-5)


def test_ties_pick_lowest_index():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    x = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    idx, _ = nearest_code(x, codebook, backend="torch")
    assert idx.tolist() == [0, 0]


@pytest.mark.triton
@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_triton_matches_reference(n, k, d, metric, device):
    x, codebook = torch.randn(n, d, device=device), torch.randn(k, d, device=device)
    idx, dist = nearest_code(x, codebook, metric, backend="triton")
    ref_idx, ref_dist = nearest_code(x, codebook, metric, backend="torch")
    assert_optimal(idx.cpu(), dist.cpu(), x.cpu(), codebook.cpu(), metric)
    assert torch.allclose(dist, ref_dist, atol=1e-4 * (1 + ref_dist.abs().max()), rtol=0)


@pytest.mark.triton
@pytest.mark.parametrize("num_splits", [2, 3])
def test_triton_split_codebook(num_splits, device):
    """The two-stage reduction over codebook splits gives the single-pass answer."""
    from lgvq.kernels.nearest import nearest_code_search

    x, codebook = torch.randn(9, 20, device=device), torch.randn(300, 20, device=device)
    norms = codebook.pow(2).sum(1)
    one = nearest_code_search(x, codebook, norms, num_splits=1)
    split = nearest_code_search(x, codebook, norms, num_splits=num_splits)
    assert torch.equal(one[1], split[1])
    assert torch.allclose(one[0], split[0])


@pytest.mark.triton
def test_triton_split_ties_pick_lowest_index(device):
    """Identical codes in different splits: the lowest index wins, as in torch.argmin."""
    from lgvq.kernels.nearest import nearest_code_search

    codebook = torch.randn(300, 8, device=device)
    codebook[290] = codebook[5]
    x = codebook[5:6] + 0.0
    _, idx = nearest_code_search(x, codebook, codebook.pow(2).sum(1), num_splits=3)
    assert idx.item() == 5


@pytest.mark.triton
def test_triton_ties_inside_one_split_pick_lowest_index(device):
    """Identical codes in different code tiles of one split (the interpreter's tiles hold 32
    codes), and inside one tile: the running fold must keep the earlier tile on ties."""
    from lgvq.kernels.nearest import nearest_code_search

    codebook = torch.randn(200, 8, device=device)
    codebook[70] = codebook[5]  # a later tile
    codebook[6] = codebook[5] * 1.0  # the same tile
    codebook[150] = codebook[40]
    x = torch.stack([codebook[5], codebook[40]]) + 0.0
    _, idx = nearest_code_search(x, codebook, codebook.pow(2).sum(1), num_splits=1)
    assert idx.tolist() == [5, 40]


def _near_ties(n, k, d, device):
    """Codes in tight clusters around a large shared offset: |e|^2 and 2 x·e are ~10^3
    times the gaps between the nearest codes (cancellation), and every row has several
    codes almost as near as its best."""
    offset = 8.0 * torch.randn(d)
    centres = offset + torch.randn(k // 4, d)
    codebook = (centres.repeat_interleave(4, 0) + 0.05 * torch.randn(k // 4 * 4, d))[:k]
    x = codebook[torch.randint(0, k, (n,))] + 0.02 * torch.randn(n, d)
    return x.to(device), codebook.to(device)


@pytest.mark.triton
@pytest.mark.parametrize("inputs", ["random", "near_ties"])
def test_triton_argmin_is_exact_within_documented_tolerance(inputs, device):
    """The chosen code's exact (fp64) distance exceeds the best one by at most
    ``argmin_tolerance`` (the interpreter's dots are IEEE fp32; a GPU checks its own policy)."""
    from lgvq.kernels import INTERPRET, fp32_dot_precision
    from lgvq.kernels.nearest import argmin_tolerance

    n, k, d = 60, 200, 40
    x, codebook = _near_ties(n, k, d, device) if inputs == "near_ties" else (
        torch.randn(n, d, device=device), torch.randn(k, d, device=device))
    idx, _ = nearest_code(x, codebook, backend="triton")
    full = dense_distances(x.cpu(), codebook.cpu(), "l2")
    excess = full.gather(1, idx.cpu().reshape(-1, 1)).squeeze(1) - full.min(dim=1).values
    tol = argmin_tolerance(x.cpu(), codebook.cpu(), "ieee" if INTERPRET else fp32_dot_precision())
    assert (excess <= tol).all(), (excess.max(), tol.min())
    if inputs == "near_ties":  # worth something only if a wrong pick would exceed the tolerance
        gap = full.sort(dim=1).values[:, 1] - full.min(dim=1).values
        assert (tol < gap).float().mean() > 0.9


@pytest.mark.triton
def test_triton_non_contiguous_and_batched_input(device):
    x = torch.randn(17, 2, 3, 5, device=device).permute(1, 2, 3, 0)  # (2, 3, 5, 17), non-contiguous
    codebook = torch.randn(17, 40, device=device).t()  # (40, 17), non-contiguous
    assert not x.is_contiguous() and not codebook.is_contiguous()
    idx, dist = nearest_code(x, codebook, backend="triton")
    assert idx.shape == (2, 3, 5)
    ref_idx, ref_dist = nearest_code(x.contiguous(), codebook.contiguous(), backend="torch")
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(dist, ref_dist, atol=1e-4)


@pytest.mark.triton
def test_triton_precomputed_code_norms(device):
    x, codebook = torch.randn(6, 9, device=device), torch.randn(33, 9, device=device)
    norms = codebook.pow(2).sum(1)
    with_norms = nearest_code(x, codebook, backend="triton", code_sq_norms=norms)
    without = nearest_code(x, codebook, backend="triton")
    assert torch.equal(with_norms[0], without[0])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k,d", [(1, 1000, 256), (4099, 1037, 64), (2048, 16384, 300)])
def test_gpu_low_precision_is_near_optimal(n, k, d, dtype):
    x = torch.randn(n, d, device="cuda", dtype=dtype)
    codebook = torch.randn(k, d, device="cuda", dtype=dtype)
    idx, dist = nearest_code(x, codebook, backend="triton")
    full = dense_distances(x, codebook, "l2")
    chosen = full.gather(1, idx.reshape(-1, 1)).squeeze(1)
    # low-precision products: the pick is optimal up to the input rounding
    assert torch.allclose(chosen, full.min(1).values, rtol=2e-2, atol=1e-1)


@pytest.mark.gpu
def test_gpu_large_shape_and_determinism():
    x = torch.randn(65536, 64, device="cuda")
    codebook = torch.randn(16384, 64, device="cuda")
    first = nearest_code(x, codebook, backend="triton")
    second = nearest_code(x, codebook, backend="triton")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    ref = nearest_code(x, codebook, backend="torch")
    assert (first[0] == ref[0]).float().mean() > 0.999
    assert torch.allclose(first[1], ref[1], atol=1e-3, rtol=1e-4)


# ---- bad input ---------------------------------------------------------------------------

BAD_INPUTS = [
    (lambda: (torch.randn(4, 3), torch.randn(5)), ValueError, "codebook must have 2 dimensions"),
    (lambda: (torch.randn(4, 3), torch.randn(5, 4)), ValueError, "code dimension 3"),
    (lambda: (torch.randint(0, 3, (4, 3)), torch.randn(5, 3)), TypeError, "x must have dtype"),
    (lambda: ([[0.0, 1.0]], torch.randn(5, 2)), TypeError, "x must be a torch.Tensor"),
    (lambda: (torch.tensor([[float("nan"), 0.0]]), torch.randn(5, 2)), ValueError, "x contains NaN"),
    (lambda: (torch.randn(2, 2), torch.tensor([[float("inf"), 0.0]])), ValueError, "codebook contains NaN or Inf"),
    (lambda: (torch.randn(0, 3), torch.randn(5, 3)), ValueError, "x is empty"),
    (lambda: (torch.randn(4, 3), torch.randn(0, 3)), ValueError, "codebook is empty"),
    (lambda: (torch.randn(4, 3), torch.randn(5, 3, device="meta")), ValueError, "same device"),
]


@pytest.mark.parametrize("make,err,msg", BAD_INPUTS)
def test_bad_input_is_rejected(make, err, msg):
    x, codebook = make()
    with strict_mode(), pytest.raises(err, match=msg):  # NaN/Inf checks run in strict mode only
        nearest_code(x, codebook)


def test_bad_options_are_rejected():
    x, codebook = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="metric"):
        nearest_code(x, codebook, "dot")
    with pytest.raises(ValueError, match="backend"):
        nearest_code(x, codebook, backend="cuda")
    with pytest.raises(ValueError, match="one entry per code"):
        nearest_code(x, codebook, code_sq_norms=torch.ones(4))
    with pytest.raises(ValueError, match="metric='l2' only"):
        nearest_code(x, codebook, "cos", code_sq_norms=torch.ones(5))


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend_mod, "INTERPRET", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        nearest_code(torch.randn(4, 3), torch.randn(5, 3), backend="triton")


def test_torch_search_tiles_and_ties_match_dense_argmin():
    """Integer inputs make many exact ties across code runs and tiles: the tiled two-step
    argmin must pick exactly what a dense argmin picks (the lowest index)."""
    from lgvq.ops.nearest import search_torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (500, 4), generator=gen).float()
    codebook = torch.randint(-2, 3, (4096, 4), generator=gen).float()
    offsets = codebook.pow(2).sum(1)
    _, idx = search_torch(x, codebook, offsets)
    assert torch.equal(idx, (offsets - 2 * x @ codebook.t()).argmin(1))
