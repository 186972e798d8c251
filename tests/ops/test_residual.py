"""residual_quantize: the torch path against an eager L-stage oracle written here and against
vector-quantize-pytorch's ResidualVQ; the Triton path against the torch path (interpreter)."""

import pytest
import torch
import torch.nn.functional as F

from lgvq.ops import residual_code_statistics, residual_quantize, stage_inputs
from lgvq.ops.residual import residual_backward_op, residual_quantize_op

# (N, L, K, d): N = 1, K not a multiple of any tile, d not a power of two, L = 1.
SHAPES = [(1, 3, 5, 3), (13, 1, 7, 17), (29, 4, 45, 24), (40, 3, 130, 9)]


def eager_oracle(x, codebooks, metric, rotation):
    """L stages of plain torch, differentiated by autograd.

    Stage l compares its input (the residual, or the residual scaled to unit length for
    cosine codes) with every unit-or-raw code by a dense float64 distance, takes the nearest
    (lowest index on ties), and passes its input's gradient straight through to the output
    (or through the rotation that maps the input's direction onto the code's, scaled by the
    ratio of their lengths, with the rotation itself held constant). The next residual
    subtracts the stage's output without gradient. The stage loss is the mean squared gap
    between input and code, with gradient to both.
    """
    cos = metric == "cos"
    residual, out, chosen, losses = x, 0.0, [], []
    for codes in codebooks:
        codes = F.normalize(codes, dim=-1) if cos else codes
        inp = F.normalize(residual, dim=-1) if cos else residual
        dist = torch.cdist(inp.detach().double(), codes.detach().double())
        idx = dist.argmin(dim=1)
        code = codes[idx]
        losses.append((inp - code).pow(2).mean())
        if rotation:
            a = inp.detach() / inp.detach().norm(dim=1, keepdim=True)
            b = code.detach() / code.detach().norm(dim=1, keepdim=True)
            mirror = F.normalize(a + b, dim=1)
            scale = code.detach().norm(dim=1, keepdim=True) / inp.detach().norm(dim=1, keepdim=True)
            dot = lambda p, s: (p * s).sum(dim=1, keepdim=True)  # noqa: E731
            stage_out = scale * (inp - 2 * dot(inp, mirror) * mirror + 2 * dot(inp, a) * b)
        else:
            stage_out = inp + (code - inp).detach()
        out = out + stage_out
        residual = residual - stage_out.detach()
        chosen.append(idx)
    return out, torch.stack(chosen, dim=1), torch.stack(losses)


def run(fn, x, codebooks, upstream, loss_weights):
    x = x.detach().clone().requires_grad_(True)
    codebooks = codebooks.detach().clone().requires_grad_(True)
    quantized, indices, losses = fn(x, codebooks)
    ((quantized * upstream).sum() + (losses * loss_weights).sum()).backward()
    return quantized.detach(), indices, losses.detach(), x.grad, codebooks.grad


def assert_same(got, want, atol=1e-5):
    for name, a, b in zip(["quantized", "indices", "losses", "grad x", "grad codebooks"], got, want):
        if name == "indices":
            assert torch.equal(a, b), name
        else:
            assert torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4), (name, (a - b).abs().max())


def _inputs(n, num_stages, k, d, dtype=torch.float32):
    return torch.randn(n, d, dtype=dtype), torch.randn(num_stages, k, d, dtype=dtype)


@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("n,num_stages,k,d", SHAPES)
def test_torch_path_matches_eager_oracle(n, num_stages, k, d, metric, rotation):
    x, codebooks = _inputs(n, num_stages, k, d)
    upstream, weights = torch.randn(n, d), torch.rand(num_stages) + 0.5
    got = run(lambda x, c: residual_quantize(x, c, metric=metric, rotation_trick=rotation, backend="torch"),
              x, codebooks, upstream, weights)
    assert_same(got, run(lambda x, c: eager_oracle(x, c, metric, rotation), x, codebooks, upstream, weights))


@pytest.mark.parametrize("small_tiles", [False, True])
@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_row_blocks_do_not_change_the_result(monkeypatch, metric, small_tiles):
    """Blocks of 5 rows on the CPU workers: outputs, gradients (the codebook's summed over the
    workers' buffers) and statistics as the oracle's; with ``small_tiles`` each block's search
    also runs in tiles of 3 rows (3 + 2) × 5 codes (5 + 5 + 2), reusing one worker's buffers."""
    import lgvq.ops.nearest as nearest_mod
    import lgvq.ops.residual as residual_mod

    monkeypatch.setattr(residual_mod, "ROW_BLOCK", 5)
    if small_tiles:
        monkeypatch.setattr(nearest_mod, "CPU_TILE_BYTES", 15 * 4)
        monkeypatch.setattr(nearest_mod, "CPU_CODE_BLOCK", 5)
    x, codebooks = _inputs(29, 3, 12, 7)
    upstream, weights = torch.randn(29, 7), torch.tensor([1.0, 2.0, 0.5])
    got = run(lambda x, c: residual_quantize(x, c, metric=metric, backend="torch"), x, codebooks, upstream, weights)
    assert_same(got, run(lambda x, c: eager_oracle(x, c, metric, False), x, codebooks, upstream, weights))
    counts, sums = residual_code_statistics(x, codebooks, got[1], metric=metric, backend="torch")
    monkeypatch.setattr(residual_mod, "ROW_BLOCK", 512)
    whole = residual_code_statistics(x, codebooks, got[1], metric=metric, backend="torch")
    assert torch.equal(counts, whole[0]) and torch.allclose(sums, whole[1], atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_backward_saves_x_codebooks_and_indices_only(metric):
    """What autograd keeps per row is x and the (N, L) indices: the backward replays the stages
    from them, so no per-stage residual, code or distance is saved (N = 600 rows > L·K codes,
    so a per-row (N, d) tensor per stage would exceed the bound)."""
    n, num_stages = 600, 4
    x, codebooks = _inputs(n, num_stages, 50, 12)
    x.requires_grad_()
    codebooks.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        residual_quantize(x, codebooks, metric=metric, backend="torch")
    storages = {t.untyped_storage().data_ptr(): (t.shape[0] == n, t.untyped_storage().nbytes()) for t in saved}
    per_row = sum(size for rows, size in storages.values() if rows)
    per_code = sum(size for rows, size in storages.values() if not rows)
    assert per_row <= x.nbytes + n * num_stages * 8
    assert per_code <= 4 * codebooks.nbytes  # the codebooks (and for cosine their normalisation's)


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_cpu_workers_record_no_autograd_graph(monkeypatch, metric):
    """Grad mode is per thread: the torch path's row blocks run on pool workers, which must not
    record their intermediates for an x and codebooks that require grad (the outputs, written
    block by block, then held every block's graph: 170 MiB at N = 16,384, L = 8, K = 1,024)."""
    import lgvq.ops.residual as residual_mod

    monkeypatch.setattr(residual_mod, "ROW_BLOCK", 5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, codebooks = _inputs(23, 3, 9, 5)
        x.requires_grad_()
        codebooks.requires_grad_()
        cos = metric == "cos"
        codes = F.normalize(codebooks, dim=-1) if cos else codebooks
        offsets = residual_mod._stage_offsets(codes, cos)
        outputs = residual_mod.residual_search(x, codes, offsets, cos, "torch")
        outputs += residual_mod.residual_backward_torch(x, codes, outputs[1], None, torch.randn(23, 5, requires_grad=True),
                                                        torch.ones(3, requires_grad=True), cos, True, True)
        outputs += residual_code_statistics(x, codebooks, outputs[1], metric=metric, backend="torch")
    finally:
        torch.set_num_threads(threads)
    assert not any(t.requires_grad for t in outputs)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_mask_is_the_kept_rows_alone(metric, rotation, backend):
    """Rows are independent: with a mask, the kept rows' values, indices, losses (means over kept
    rows only) and gradients are the oracle's on the kept rows alone; padded rows quantize to 0
    and get no gradient, and give the codebooks none."""
    x, codebooks = _inputs(19, 3, 13, 6)
    upstream, weights = torch.randn(19, 6), torch.tensor([1.0, 0.5, 2.0])
    mask = torch.rand(19) > 0.4
    mask[0], mask[1] = True, False  # both kinds present
    got = run(lambda x, c: residual_quantize(x, c, metric=metric, rotation_trick=rotation, mask=mask, backend=backend),
              x, codebooks, upstream, weights)
    want = run(lambda x, c: eager_oracle(x, c, metric, rotation), x[mask], codebooks, upstream[mask], weights)
    quantized, indices, losses, grad_x, grad_codebooks = got
    assert_same((quantized[mask], indices[mask], losses, grad_x[mask], grad_codebooks), want)
    assert not quantized[~mask].any() and not grad_x[~mask].any()


def test_mask_with_no_kept_row_gives_zero_losses():
    """The loss denominator is floored at 1 (vqp's masked mean), not 0/0."""
    x, codebooks = _inputs(4, 2, 5, 3)
    quantized, _, losses = residual_quantize(x, codebooks, mask=torch.zeros(4, dtype=torch.bool), backend="torch")
    assert torch.equal(losses, torch.zeros(2)) and not quantized.any()


def test_l2_straight_through_gradient_is_L_times_upstream():
    """Every stage passes the output gradient to x once: L stages, L times (vqp's behaviour)."""
    x = torch.randn(6, 5, requires_grad=True)
    quantized, _, _ = residual_quantize(x, torch.randn(4, 9, 5), backend="torch")
    upstream = torch.randn(6, 5)
    (quantized * upstream).sum().backward()
    assert torch.allclose(x.grad, 4 * upstream)


def test_shared_codebook_sums_stage_gradients():
    x, codebook = torch.randn(11, 6), torch.randn(8, 6)
    upstream, weights = torch.randn(11, 6), torch.tensor([1.0, 2.0, 3.0])
    shared = run(lambda x, c: residual_quantize(x, c, num_stages=3, backend="torch"), x, codebook, upstream, weights)
    want = run(lambda x, c: eager_oracle(x, [c] * 3, "l2", False), x, codebook, upstream, weights)
    assert_same(shared, want)


def test_batched_non_contiguous_input():
    x = torch.randn(6, 2, 3, 10).transpose(0, 2)  # (3, 2, 6, 10), not contiguous
    codebooks = torch.randn(3, 21, 10)
    upstream = torch.randn(x.shape)
    weights = torch.ones(3)
    got = run(lambda x, c: residual_quantize(x, c, metric="cos", backend="torch"), x, codebooks, upstream, weights)
    assert got[0].shape == x.shape and got[1].shape == (3, 2, 6, 3)
    want = run(lambda x, c: eager_oracle(x, c, "cos", False), x.reshape(-1, 10), codebooks,
               upstream.reshape(-1, 10), weights)
    quantized, indices, losses, grad_x, grad_codebooks = got
    flat = (quantized.reshape(-1, 10), indices.reshape(-1, 3), losses, grad_x.reshape(-1, 10), grad_codebooks)
    assert_same(flat, want)


def test_ties_and_collapsed_codebook_pick_lowest_index():
    """Every code equal: every stage picks code 0 and removes it from the residual."""
    x = torch.randn(5, 4)
    codebooks = torch.randn(1, 1, 4).expand(3, 6, 4)
    quantized, indices, losses = residual_quantize(x, codebooks, backend="torch")
    assert torch.equal(indices, torch.zeros(5, 3, dtype=torch.int64))
    assert torch.allclose(quantized, 3 * codebooks[0, 0].expand(5, 4))
    assert torch.allclose(losses[1], (x - 2 * codebooks[0, 0]).pow(2).mean())


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_gradcheck_float64_losses(metric):
    """The losses are truly differentiable in x, and in the codebook of a single stage. (The
    straight-through output is not, by design: its value is piecewise constant; nor is a later
    stage's loss in an earlier codebook, which the residual chain detaches, as vqp does.)"""
    x, codebooks = _inputs(4, 3, 5, 3, torch.float64)
    weights = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def weighted(x, c):
        return (residual_quantize(x, c, metric=metric, backend="torch")[2] * weights[: c.shape[0]]).sum()

    torch.autograd.gradcheck(lambda x: weighted(x, codebooks), (x.requires_grad_(),))
    torch.autograd.gradcheck(lambda c: weighted(x.detach(), c), (codebooks[:1].clone().requires_grad_(),))


@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_matches_vqp_residual_vq(metric, rotation, shared):
    """The same values, indices, losses and input gradients as vqp's ResidualVQ in training
    mode, from the same codebook state (EMA updates act after the forward, on buffers)."""
    from vector_quantize_pytorch import ResidualVQ

    peer = ResidualVQ(dim=8, num_quantizers=3, codebook_size=16, use_cosine_sim=metric == "cos",
                      rotation_trick=rotation, shared_codebook=shared).train()
    codebooks = peer.codebooks.clone()
    x = torch.randn(2, 7, 8)
    upstream, weights = torch.randn(2, 7, 8), torch.tensor([1.0, 0.5, 2.0])
    want_x = x.clone().requires_grad_()
    quantized, indices, losses = peer(want_x)
    ((quantized * upstream).sum() + (losses * weights).sum()).backward()
    got_x = x.clone().requires_grad_()
    got = residual_quantize(got_x, codebooks, metric=metric, rotation_trick=rotation, backend="torch")
    ((got[0] * upstream).sum() + (got[2] * weights).sum()).backward()
    assert torch.equal(got[1], indices)
    assert torch.allclose(got[0], quantized, atol=1e-5)
    assert torch.allclose(got[2], losses, atol=1e-6)
    assert torch.allclose(got_x.grad, want_x.grad, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_statistics_and_stage_inputs_replay_the_stages(metric):
    x, codebooks = _inputs(23, 3, 9, 5)
    _, indices, _ = residual_quantize(x, codebooks, metric=metric, backend="torch")
    counts, sums = residual_code_statistics(x, codebooks, indices, metric=metric, backend="torch")
    assert counts.shape == (3, 9) and sums.shape == (3, 9, 5)
    residual = x
    for stage, got in enumerate(stage_inputs(x, codebooks, indices, metric=metric)):
        codes = F.normalize(codebooks[stage], dim=-1) if metric == "cos" else codebooks[stage]
        want = F.normalize(residual, dim=-1) if metric == "cos" else residual
        assert torch.allclose(got, want, atol=1e-6)
        one_hot = F.one_hot(indices[:, stage], 9).float()
        assert torch.equal(counts[stage], one_hot.sum(0))
        assert torch.allclose(sums[stage], one_hot.t() @ want, atol=1e-5)
        residual = residual - codes[indices[:, stage]]


def test_compiles_fullgraph_and_matches_eager():
    x, codebooks = _inputs(17, 3, 11, 6)
    upstream, weights = torch.randn(17, 6), torch.ones(3)

    def fn(x, c):
        return residual_quantize(x, c, metric="cos", rotation_trick=True, backend="torch")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert_same(run(compiled, x, codebooks, upstream, weights), run(fn, x, codebooks, upstream, weights))


def test_makes_no_host_sync():
    from tests.test_no_sync import count_syncs

    x = torch.randn(9, 6, requires_grad=True)
    codebooks = torch.randn(3, 11, 6, requires_grad=True)

    def step():
        quantized, indices, losses = residual_quantize(x, codebooks, backend="torch")
        (quantized.sum() + losses.sum()).backward()
        residual_code_statistics(x.detach(), codebooks.detach(), indices, backend="torch")

    assert count_syncs(step) == []


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("code_grad", [True, False])
def test_registered_ops(code_grad, masked):
    x, codebooks = _inputs(13, 3, 10, 6)
    offsets = codebooks.pow(2).sum(-1)
    mask = torch.arange(13) % 3 > 0 if masked else None
    torch.library.opcheck(residual_quantize_op, (x.requires_grad_(), codebooks.requires_grad_(code_grad), offsets,
                                                 mask, False, True, "torch"))
    _, indices, _ = residual_quantize_op(x.detach(), codebooks.detach(), offsets, mask, False, True, "torch")
    args = (x.detach(), codebooks.detach(), indices, mask, torch.randn(13, 6), torch.ones(3), True, True, code_grad)
    torch.library.opcheck(residual_backward_op, args)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: residual_quantize(torch.randn(3, 4), torch.randn(2, 5, 3)), "code dimension 4"),
        (lambda: residual_quantize(torch.randn(3, 4), torch.randn(5, 4)), "num_stages"),
        (lambda: residual_quantize(torch.randn(3, 4), torch.randn(2, 5, 4), num_stages=3), "num_stages=3"),
        (lambda: residual_quantize(torch.randn(3, 4), torch.randn(5, 4, 4, 1)), r"\(L, K, d\)"),
        (lambda: residual_quantize(torch.randn(3, 4), torch.randn(2, 5, 4), metric="dot"), "metric"),
        (lambda: residual_code_statistics(torch.randn(3, 4), torch.randn(2, 5, 4), torch.zeros(3, 3).long()),
         "indices must have shape"),
        (lambda: residual_quantize(torch.randn(3, 4), torch.randn(2, 5, 4), mask=torch.ones(4, dtype=torch.bool)),
         "mask must have x's leading shape"),
        (lambda: residual_quantize(torch.randn(3, 4), torch.randn(2, 5, 4), mask=torch.ones(3)), "mask"),
    ],
)
def test_rejects_bad_input(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---- the Triton path (the interpreter on CPU) ---------------------------------------------------

TRITON_SHAPES = [(1, 2, 5, 3), (21, 3, 45, 17), (19, 2, 70, 300)]  # d = 300: the per-stage fallback


@pytest.mark.triton
@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("n,num_stages,k,d", TRITON_SHAPES)
def test_triton_matches_torch(n, num_stages, k, d, metric, rotation, device):
    x, codebooks = (t.to(device) for t in _inputs(n, num_stages, k, d))
    upstream, weights = torch.randn(n, d, device=device), torch.rand(num_stages, device=device) + 0.5

    def with_backend(backend):
        return lambda x, c: residual_quantize(x, c, metric=metric, rotation_trick=rotation, backend=backend)

    assert_same(run(with_backend("triton"), x, codebooks, upstream, weights),
                run(with_backend("torch"), x, codebooks, upstream, weights))


@pytest.mark.triton
def test_triton_shared_codebook_and_non_contiguous_input(device):
    x = torch.randn(7, 3, 12, device=device).transpose(0, 1)
    codebook = torch.randn(40, 12, device=device)
    upstream, weights = torch.randn(x.shape, device=device), torch.ones(4, device=device)

    def with_backend(backend):
        return lambda x, c: residual_quantize(x, c, num_stages=4, backend=backend)

    assert_same(run(with_backend("triton"), x, codebook, upstream, weights),
                run(with_backend("torch"), x, codebook, upstream, weights))


@pytest.mark.triton
def test_triton_ties_pick_lowest_index(device):
    # every code equal, across code tiles; small integers keep every dot product exact, so the
    # tie survives any summation order (the interpreter's numpy matmul)
    codebooks = torch.randint(-4, 5, (1, 1, 6), device=device).float().expand(2, 40, 6)
    x = torch.randint(-4, 5, (5, 6), device=device).float()
    _, indices, _ = residual_quantize(x, codebooks, backend="triton")
    assert torch.equal(indices, torch.zeros(5, 2, dtype=torch.int64, device=device))


@pytest.mark.triton
def test_triton_registered_op(device):
    x, codebooks = (t.to(device) for t in _inputs(13, 3, 40, 6))
    torch.library.opcheck(residual_quantize_op, (x.requires_grad_(), codebooks, codebooks.pow(2).sum(-1),
                                                 None, False, False, "triton"))


@pytest.mark.triton
@pytest.mark.parametrize("arch,precision,fused", [
    (80, "highest", False),  # 3xTF32 on mma.sync: 128-wide fp32 rows spill on sm_80
    (90, "highest", True),
    (80, "high", True),      # plain TF32 holds no split operands
])
def test_wide_split_tf32_rows_go_stage_by_stage_before_sm90(monkeypatch, arch, precision, fused):
    from lgvq.kernels import nearest, residual as kernel
    from lgvq.ops import residual as op

    monkeypatch.setattr(nearest, "DEFAULT_ARCH", arch)  # what device_arch reports off CUDA
    paths = []
    monkeypatch.setattr(kernel, "residual_search", lambda *args: paths.append("fused"))
    monkeypatch.setattr(op, "residual_search_staged", lambda *args: paths.append("staged"))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        op.residual_search(torch.zeros(2, 128), torch.zeros(3, 4, 128), torch.zeros(3, 4), False, "triton")
        assert kernel.fits_on_chip(64, torch.float32) and kernel.fits_on_chip(128, torch.bfloat16)
        assert not kernel.fits_on_chip(256, torch.bfloat16)
    finally:
        torch.set_float32_matmul_precision(before)
    assert paths == ["fused" if fused else "staged"]


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision_matches_torch(dtype):
    x, codebooks = (t.to("cuda", dtype) for t in _inputs(300, 4, 1000, 128))
    got = residual_quantize(x, codebooks, backend="triton")
    want = residual_quantize(x, codebooks, backend="torch")
    assert (got[1] == want[1]).float().mean() > 0.99  # near-ties may round either way in 16 bits
    assert torch.allclose(got[2], want[2], rtol=2e-2)
