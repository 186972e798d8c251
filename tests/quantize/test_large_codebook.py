"""Large codebooks: ProjectedVectorQuantizer (SimVQ / VQGAN-LC) against the SimVQ release's formula
written out here, its construction paths, and forward + backward at K = 2^18 in bounded memory
(l2, cosine with EMA and restarts, projected) with O(K) usage statistics."""

import os

import pytest
import torch
import torch.nn.functional as F

from lgvq.quantize import ProjectedVectorQuantizer, VectorQuantizer, perplexity_from_counts

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]
LARGE_K = 2**18


def simvq_release(z, frozen, weight, bias, beta, legacy):
    """SimVQ's quantizer forward on flat z (N, d), as released: codes = Linear(C), dense distances."""
    codebook = F.linear(frozen, weight, bias)
    d = torch.sum(z**2, dim=1, keepdim=True) + torch.sum(codebook**2, dim=1) - 2 * z @ codebook.t()
    idx = torch.argmin(d, dim=1)
    z_q = codebook[idx]
    if legacy:
        loss = torch.mean((z_q.detach() - z) ** 2) + beta * torch.mean((z_q - z.detach()) ** 2)
    else:
        loss = beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
    return z + (z_q - z).detach(), idx, loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("legacy", [False, True])
def test_projected_matches_simvq_release(backend, legacy):
    q = ProjectedVectorQuantizer(41, 6, beta=0.25, legacy=legacy, backend=backend).train()
    z = torch.randn(30, 6, requires_grad=True)
    upstream = torch.randn(30, 6)
    weight = q.embedding_proj.weight.detach().clone().requires_grad_(True)
    bias = q.embedding_proj.bias.detach().clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)

    out = q.quantize(z)
    ((out.z_q * upstream).sum() + out.loss).backward()
    ref_zq, ref_idx, ref_loss = simvq_release(z_ref, q.embedding.weight, weight, bias, 0.25, legacy)
    ((ref_zq * upstream).sum() + ref_loss).backward()

    assert torch.equal(out.indices, ref_idx)
    assert torch.allclose(out.z_q, ref_zq, atol=1e-6)
    assert torch.allclose(out.loss, ref_loss, atol=1e-6)
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-6)
    assert torch.allclose(q.embedding_proj.weight.grad, weight.grad, atol=1e-6)
    assert torch.allclose(q.embedding_proj.bias.grad, bias.grad, atol=1e-6)
    assert q.embedding.weight.grad is None and not q.embedding.weight.requires_grad


def test_one_projection_step_moves_every_code():
    """SimVQ's point: the gradient of the few codes picked updates W, and through it all K codes."""
    q = ProjectedVectorQuantizer(64, 4).train()
    frozen = q.embedding.weight.detach().clone()
    before = q.codebook.detach().clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    out = q.quantize(torch.randn(5, 4))
    out.loss.backward()
    opt.step()
    assert out.indices.unique().numel() <= 5
    assert bool(((q.codebook.detach() - before).norm(dim=1) > 0).all())
    assert torch.equal(q.embedding.weight, frozen)


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_given_codes_of_another_dimension(metric):
    codes = torch.randn(20, 12)
    q = ProjectedVectorQuantizer(20, 3, codes=codes, metric=metric).eval()
    assert q.code_dim == 12 and torch.equal(q.embedding.weight, codes)
    assert q.codebook.shape == (20, 3)
    out = q.quantize(torch.randn(2, 5, 3))
    assert out.z_q.shape == (2, 5, 3)
    assert torch.allclose(q.get_codebook_entry(out.indices), out.z_q, atol=1e-6)
    if metric == "cos":
        assert torch.allclose(out.z_q.norm(dim=-1), torch.ones(2, 5), atol=1e-5)


def test_default_frozen_codebook_follows_simvq_init():
    q = ProjectedVectorQuantizer(4096, 16)
    assert q.code_dim == 16
    assert abs(q.embedding.weight.std().item() - 16**-0.5) < 0.01
    assert abs(q.embedding.weight.mean().item()) < 0.01


def test_from_features_uses_kmeans_centroids_and_vqgan_lc_init():
    centers = torch.tensor([[4.0] * 32, [-4.0] * 32, [0.0] * 16 + [8.0] * 16])
    features = centers.repeat_interleave(50, 0) + 0.05 * torch.randn(150, 32)
    q = ProjectedVectorQuantizer.from_features(features, 3, 256, generator=torch.Generator().manual_seed(0))
    found = sorted(q.embedding.weight.tolist())
    assert torch.allclose(torch.tensor(found), torch.tensor(sorted(centers.tolist())), atol=0.05)
    assert q.embedding_proj.weight.shape == (256, 32)
    assert abs(q.embedding_proj.weight.std().item() - 256**-0.5) < 0.005


def test_simvq_checkpoint_loads_strictly():
    q = ProjectedVectorQuantizer(16, 4)
    state = {"embedding.weight": torch.randn(16, 4), "embedding_proj.weight": torch.randn(4, 4),
             "embedding_proj.bias": torch.randn(4)}
    q.load_state_dict(state, strict=True)
    assert torch.allclose(q.codebook, state["embedding.weight"] @ state["embedding_proj.weight"].t()
                          + state["embedding_proj.bias"])


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(ema=True), "does not support ema"),
        (dict(kmeans_init=True), "does not support kmeans_init"),
        (dict(dead_code_threshold=1.0), "does not support dead_code_threshold"),
        (dict(code_dim=0), "code_dim must be > 0"),
        (dict(codes=torch.randn(7, 4)), "n_e=8 rows"),
        (dict(codes=torch.randn(8, 4), code_dim=5), "code_dim=5"),
        (dict(codes=torch.full((8, 4), float("nan"))), "NaN"),
    ],
)
def test_bad_construction(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ProjectedVectorQuantizer(8, 4, **kwargs)


# ---- K = 2^18 ------------------------------------------------------------------------------

def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_growth(fn) -> int:
    """Bytes of resident memory ``fn()`` added at its peak (VmHWM, reset via clear_refs).

    Any allocation as large as an N×K matrix here is above glibc's mmap threshold, so it
    is mapped fresh and shows up in the high-water mark even if freed heap was around.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) * 1024


LARGE_QUANTIZERS = {
    "l2": lambda: VectorQuantizer(LARGE_K, 8, backend="torch"),
    "cos+ema+restarts": lambda: VectorQuantizer(
        LARGE_K, 8, metric="cos", ema=True, dead_code_threshold=0.5, backend="torch"
    ),
    "projected": lambda: ProjectedVectorQuantizer(LARGE_K, 8, backend="torch"),
}


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("name", sorted(LARGE_QUANTIZERS))
def test_large_codebook_forward_backward_in_bounded_memory(name):
    """K = 2^18, d = 8, N = 512: one fp32 N×K matrix would be 512 MiB; allow half of that."""
    q = LARGE_QUANTIZERS[name]().train()
    z = torch.randn(512, 8, requires_grad=True)

    def step():
        out = q.quantize(z)
        (out.z_q.square().sum() + out.loss).backward()
        return out

    growth = peak_rss_growth(step)
    assert growth < 256 * 2**20, f"{name}: {growth / 2**20:.0f} MiB"
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())


def test_usage_statistics_at_large_k_are_exact():
    q = VectorQuantizer(LARGE_K, 8, track_usage=True, usage_window=2, backend="torch").train()
    q.embedding.weight.data.normal_()
    hits = torch.tensor([5, 5, 5, 77, 1000, LARGE_K - 1])
    out = q.quantize(q.embedding.weight.detach()[hits].clone())  # each row sits on its code
    assert torch.equal(out.indices, hits)
    assert out.usage.item() == 4 / LARGE_K
    assert torch.allclose(out.perplexity, perplexity_from_counts(torch.tensor([3.0, 1.0, 1.0, 1.0])))
    assert torch.equal((q.last_used == 1).nonzero().flatten(), hits.unique())
    q.quantize(q.embedding.weight.detach()[:1].clone())  # step 2: code 0 only
    q.quantize(q.embedding.weight.detach()[:1].clone())  # step 3: the first hits leave the window
    assert q.codebook_usage().item() == 1 / LARGE_K
