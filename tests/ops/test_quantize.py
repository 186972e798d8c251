"""vector_quantize: Triton == torch reference (values and gradients), the reference ==
taming's formula written out here, and float64 gradcheck of the reference."""

import pytest
import torch

from lgvq.checks import strict_mode
from lgvq.ops import code_counts_and_sums, vector_quantize


def taming_quantize(z, codebook, beta):
    """taming-transformers VectorQuantizer2 (legacy=False) on flat z (N, d), as released."""
    d = (z ** 2).sum(dim=1, keepdim=True) + (codebook ** 2).sum(dim=1) - 2 * torch.einsum("bd,dn->bn", z, codebook.t())
    idx = torch.argmin(d, dim=1)
    z_q = codebook[idx]
    loss = beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
    z_q = z + (z_q - z).detach()
    return z_q, idx, loss


def run_with_grads(fn, z, codebook, upstream, loss_weight=3.0):
    z = z.detach().clone().requires_grad_(True)
    codebook = codebook.detach().clone().requires_grad_(True)
    z_q, idx, loss = fn(z, codebook)
    ((z_q.float() * upstream).sum() + loss_weight * loss).backward()
    return z_q.detach(), idx, loss.detach(), z.grad, codebook.grad


def assert_same_quantization(got, want, atol=1e-5):
    names = ["z_q", "idx", "loss", "grad z", "grad codebook"]
    for name, a, b in zip(names, got, want):
        if name == "idx":
            assert torch.equal(a, b), name
        else:
            assert torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4), name


@pytest.mark.parametrize("n,k,d", [(1, 5, 3), (23, 45, 17), (30, 130, 300)])
def test_torch_reference_equals_taming_formula(n, k, d):
    z, codebook = torch.randn(n, d), torch.randn(k, d)
    upstream = torch.randn(n, d)
    got = run_with_grads(lambda z, e: vector_quantize(z, e, 0.25, backend="torch"), z, codebook, upstream)
    want = run_with_grads(lambda z, e: taming_quantize(z, e, 0.25), z, codebook, upstream)
    assert_same_quantization(got, want)


def test_forward_value_is_exactly_the_code():
    z, codebook = torch.randn(8, 6), torch.randn(10, 6)
    z_q, idx, _ = vector_quantize(z, codebook, backend="torch")
    assert torch.equal(z_q, codebook[idx])


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_torch_reference_gradcheck_float64(metric):
    """Finite differences see through stop-gradients, so only the one true derivative is
    checkable: the codebook loss w.r.t. the codebook with beta = 0 (z fixed; for "cos" this
    also checks the gradient through the normalisation). The straight-through and
    commitment gradients are conventions, checked against taming's formula above."""
    z = torch.randn(6, 5, dtype=torch.float64)
    codebook = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda e: vector_quantize(z, e, 0.0, metric, backend="torch")[2], (codebook,))


@pytest.mark.triton
@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("n,k,d,splits", [(1, 5, 3, None), (23, 45, 17, None), (30, 130, 300, None), (19, 300, 24, 3)])
def test_triton_matches_reference(n, k, d, splits, metric, device):
    z, codebook = torch.randn(n, d, device=device), torch.randn(k, d, device=device)
    upstream = torch.randn(n, d, device=device)
    got = run_with_grads(
        lambda z, e: vector_quantize(z, e, 0.25, metric, backend="triton", num_splits=splits), z, codebook, upstream
    )
    want = run_with_grads(lambda z, e: vector_quantize(z, e, 0.25, metric, backend="torch"), z, codebook, upstream)
    assert_same_quantization(got, want)


@pytest.mark.triton
def test_triton_non_contiguous_batched_input(device):
    z = torch.randn(5, 2, 3, 4, device=device).permute(1, 2, 3, 0)  # (2, 3, 4, 5)
    codebook = torch.randn(11, 5, device=device)
    upstream = torch.randn(2, 3, 4, 5, device=device)
    got = run_with_grads(lambda z, e: vector_quantize(z, e, backend="triton"), z, codebook, upstream)
    want = run_with_grads(lambda z, e: vector_quantize(z, e, backend="torch"), z, codebook, upstream)
    assert got[0].shape == (2, 3, 4, 5) and got[1].shape == (2, 3, 4)
    assert_same_quantization(got, want)


@pytest.mark.triton
def test_triton_frozen_codebook_and_unused_outputs(device):
    """No codebook grad requested (EMA / frozen codebooks); only the loss used downstream."""
    z = torch.randn(9, 7, device=device, requires_grad=True)
    codebook = torch.randn(13, 7, device=device)
    _, _, loss = vector_quantize(z, codebook, 0.5, backend="triton")
    loss.backward()
    z_ref = z.detach().clone().requires_grad_(True)
    vector_quantize(z_ref, codebook, 0.5, backend="torch")[2].backward()
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-6)


@pytest.fixture(params=[False, True], ids=["atomic", "deterministic"])
def deterministic(request):
    """Both codebook-gradient paths: per-block pre-reduction + relaxed atomics, and the
    sorted deterministic segment sum (torch.use_deterministic_algorithms)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(before)


@pytest.mark.triton
def test_triton_collapsed_codebook_matches_reference(deterministic, device):
    """Every row picks one code (a collapsed codebook): the segment sum meets N rows on one
    code; values and both gradients must still match the reference."""
    n, k, d = 70, 9, 20
    codebook = torch.randn(k, d, device=device)
    codebook[4] *= 0.01  # the code nearest to every row
    z = 0.01 * torch.randn(n, d, device=device)
    upstream = torch.randn(n, d, device=device)
    got = run_with_grads(lambda z, e: vector_quantize(z, e, 0.25, backend="triton"), z, codebook, upstream)
    want = run_with_grads(lambda z, e: vector_quantize(z, e, 0.25, backend="torch"), z, codebook, upstream)
    assert (want[1] == 4).all()
    assert_same_quantization(got, want)


@pytest.mark.triton
def test_triton_codebook_gradient_mixed_duplicates(deterministic, device):
    """Blocks holding several codes, some repeated (the pre-reduction's leaders), some unused."""
    z = torch.randn(53, 18, device=device)
    codebook = torch.randn(6, 18, device=device)
    upstream = torch.randn(53, 18, device=device)
    got = run_with_grads(lambda z, e: vector_quantize(z, e, 0.25, backend="triton"), z, codebook, upstream)
    want = run_with_grads(lambda z, e: vector_quantize(z, e, 0.25, backend="torch"), z, codebook, upstream)
    assert_same_quantization(got, want)


@pytest.mark.triton
def test_triton_counts_and_sums_of_a_collapsed_assignment(deterministic, device):
    x = torch.randn(45, 33, device=device)
    idx = torch.full((45,), 7, device=device)
    idx[::9] = 2
    counts, sums = code_counts_and_sums(x, idx, 10, backend="triton")
    want_counts, want_sums = code_counts_and_sums(x, idx, 10, backend="torch")
    assert torch.equal(counts, want_counts)
    assert torch.allclose(sums, want_sums, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_code_counts_and_sums_match_one_hot(backend, deterministic, device):
    x = torch.randn(3, 31, 19, device=device)
    idx = torch.randint(0, 40, (3, 31), device=device)
    counts, sums = code_counts_and_sums(x, idx, 40, backend=backend)
    one_hot = torch.nn.functional.one_hot(idx.reshape(-1), 40).float()
    assert torch.allclose(counts, one_hot.sum(0))
    assert torch.allclose(sums, one_hot.t() @ x.reshape(-1, 19), atol=1e-5)


def test_code_counts_and_sums_bad_input():
    x = torch.randn(4, 3)
    with strict_mode(), pytest.raises(ValueError, match=r"idx values must lie in \[0, 5\)"):
        code_counts_and_sums(x, torch.tensor([0, 1, 5, 2]), 5)
    with pytest.raises(RuntimeError, match=r"idx values must lie in \[0, 5\)"):  # the device-side assert
        code_counts_and_sums(x, torch.tensor([0, -1, 2, 2]), 5)
    with pytest.raises(ValueError, match="idx must have shape"):
        code_counts_and_sums(x, torch.tensor([0, 1]), 5)
    with pytest.raises(TypeError, match="idx must have dtype"):
        code_counts_and_sums(x, torch.zeros(4), 5)


def test_vector_quantize_bad_input():
    z, codebook = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        vector_quantize(z, codebook, beta=-1.0)
    with pytest.raises(ValueError, match="z has code dimension 3"):
        vector_quantize(z, torch.randn(5, 2))
    with strict_mode(), pytest.raises(ValueError, match="z contains NaN"):
        vector_quantize(torch.full((2, 3), float("nan")), codebook)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_low_precision_matches_reference(dtype):
    z = torch.randn(4096, 256, device="cuda", dtype=dtype)
    codebook = torch.randn(1024, 256, device="cuda", dtype=dtype)
    upstream = torch.randn(4096, 256, device="cuda")
    got = run_with_grads(lambda z, e: vector_quantize(z, e, backend="triton"), z, codebook, upstream)
    want = run_with_grads(lambda z, e: vector_quantize(z, e, backend="torch"), z, codebook, upstream)
    assert got[0].dtype == dtype and got[2].dtype == torch.float32
    agree = got[1] == want[1]
    assert agree.float().mean() > 0.99  # low-precision products may flip near-ties
    tol = dict(atol=2e-2, rtol=2e-2)
    assert torch.allclose(got[2], want[2], **tol)
    assert torch.allclose(got[3][agree].float(), want[3][agree].float(), **tol)


@pytest.mark.gpu
def test_gpu_deterministic_mode_repeats_bitwise(deterministic):
    """A collapsing codebook on the GPU: with deterministic algorithms on, the codebook
    gradient is identical run to run (no atomics); otherwise equal up to fp32 reassociation."""
    z = torch.randn(65536, 64, device="cuda")
    codebook = torch.randn(512, 64, device="cuda")
    codebook[:8] *= 0.01  # most rows pick one of eight codes
    upstream = torch.randn_like(z)
    first = run_with_grads(lambda z, e: vector_quantize(z, e, backend="triton"), z, codebook, upstream)
    second = run_with_grads(lambda z, e: vector_quantize(z, e, backend="triton"), z, codebook, upstream)
    want = run_with_grads(lambda z, e: vector_quantize(z, e, backend="torch"), z, codebook, upstream)
    if deterministic:
        assert torch.equal(first[4], second[4])
    assert torch.allclose(first[4], want[4], atol=1e-6, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_repeated_runs_agree():
    z = torch.randn(65536, 64, device="cuda")
    codebook = torch.randn(4096, 64, device="cuda")
    upstream = torch.randn_like(z)
    first = run_with_grads(lambda z, e: vector_quantize(z, e, backend="triton"), z, codebook, upstream)
    second = run_with_grads(lambda z, e: vector_quantize(z, e, backend="triton"), z, codebook, upstream)
    for a, b in zip(first[:4], second[:4]):  # z_q, idx, loss, grad z are deterministic
        assert torch.equal(a, b)
    # the codebook gradient is a sum of atomic adds: equal up to fp32 reassociation
    assert torch.allclose(first[4], second[4], atol=1e-6, rtol=1e-5)



def _on_threads(threads, fn):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def _codebook_gradient():
    """vector_quantize's torch-path codebook gradient (N·d = 65,536)."""
    gen = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(4096, 16, generator=gen), torch.randn(64, 16, generator=gen)
    upstream = torch.randn(4096, 16, generator=gen)
    return run_with_grads(lambda z, c: vector_quantize(z, c, backend="torch"), z, codebook, upstream)[-1]


def _code_sums():
    """code_counts_and_sums' torch-path sums (the EMA update's and k-means')."""
    gen = torch.Generator().manual_seed(0)
    x, idx = torch.randn(4096, 16, generator=gen), torch.randint(0, 64, (4096,), generator=gen)
    return code_counts_and_sums(x, idx, 64, backend="torch")[1]


@pytest.mark.parametrize("compute", [_codebook_gradient, _code_sums], ids=["codebook gradient", "code sums"])
def test_cpu_segment_sums_are_the_same_on_one_and_two_threads(compute):
    """Sums of rows per code with N·d = 65,536 ≥ 32,768: where ``codebook[idx]``'s backward
    (index_put_ with accumulate) added with parallel atomics, so the sum's order, and its last
    bits, depended on the threads and changed from run to run. Equal to the 1-thread sum on 2
    threads means equal on every 2-thread run too."""
    assert torch.equal(_on_threads(1, compute), _on_threads(2, compute))
