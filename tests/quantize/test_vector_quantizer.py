"""VectorQuantizer: the taming-compatible face against taming's formula written out here
(test_taming_face.py compares it with taming's whole module), the modern face, EMA /
k-means / dead-code restarts / usage, and bad input."""

import pytest
import torch
import torch.nn.functional as F

from lgvq.checks import strict_mode
from lgvq.quantize import VectorQuantizer, kmeans

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


def taming_vq2(z, weight, beta, legacy):
    """taming VectorQuantizer2.forward (remap=None, sane_index_shape=False), as released."""
    z = z.permute(0, 2, 3, 1).contiguous()
    z_flattened = z.view(-1, weight.shape[1])
    d = (
        torch.sum(z_flattened ** 2, dim=1, keepdim=True)
        + torch.sum(weight ** 2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", z_flattened, weight.t())
    )
    min_encoding_indices = torch.argmin(d, dim=1)
    z_q = F.embedding(min_encoding_indices, weight).view(z.shape)
    if not legacy:
        loss = beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
    else:
        loss = torch.mean((z_q.detach() - z) ** 2) + beta * torch.mean((z_q - z.detach()) ** 2)
    z_q = z + (z_q - z).detach()
    return z_q.permute(0, 3, 1, 2).contiguous(), loss, min_encoding_indices


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("legacy", [False, True])
def test_taming_face_matches_taming_formula(backend, legacy):
    q = VectorQuantizer(37, 6, beta=0.25, legacy=legacy, backend=backend)
    q.embedding.weight.data.normal_()
    z = torch.randn(2, 6, 3, 5, requires_grad=True)
    z_ref = z.detach().clone().requires_grad_(True)
    weight_ref = q.embedding.weight.detach().clone().requires_grad_(True)
    upstream = torch.randn(2, 6, 3, 5)

    z_q, loss, (perplexity, min_encodings, indices) = q(z)
    ((z_q * upstream).sum() + 2 * loss).backward()
    ref_zq, ref_loss, ref_idx = taming_vq2(z_ref, weight_ref, 0.25, legacy)
    ((ref_zq * upstream).sum() + 2 * ref_loss).backward()

    assert min_encodings is None and perplexity.ndim == 0
    assert torch.equal(indices, ref_idx)
    assert torch.allclose(z_q, ref_zq, atol=1e-6)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-6)
    assert torch.allclose(q.embedding.weight.grad, weight_ref.grad, atol=1e-6)


def test_taming_checkpoint_loads_strictly_and_entries_roundtrip():
    q = VectorQuantizer(16, 4, sane_index_shape=True)
    weight = torch.randn(16, 4)
    q.load_state_dict({"embedding.weight": weight}, strict=True)
    z = torch.randn(2, 4, 3, 3)
    z_q, _, (_, _, idx) = q.eval()(z)
    assert idx.shape == (2, 3, 3)
    assert torch.equal(q.get_codebook_entry(idx.reshape(-1), (2, 3, 3, 4)), z_q)


def test_modern_face_shapes_and_perplexity():
    q = VectorQuantizer(4, 2).eval()
    q.embedding.weight.data = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    z = torch.tensor([[[0.9, 0.1], [1.1, 0.0]], [[0.0, 0.8], [0.1, 1.2]]])  # (2, 2, 2): codes 0,0,1,1
    out = q.quantize(z)
    assert out.z_q.shape == z.shape and out.indices.tolist() == [[0, 0], [1, 1]]
    assert torch.allclose(out.perplexity, torch.tensor(2.0))  # two codes used equally


def test_cosine_codes_are_unit_vectors():
    q = VectorQuantizer(8, 5, metric="cos")
    out = q.quantize(torch.randn(10, 5) * 7)
    assert torch.allclose(out.z_q.norm(dim=-1), torch.ones(10), atol=1e-5)


def test_ema_update_follows_the_formula():
    torch.manual_seed(0)
    q = VectorQuantizer(3, 2, beta=0.5, ema=True, decay=0.9, eps=1e-5)
    q.embedding.weight.data = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    q.ema_sums.copy_(q.embedding.weight.data)
    z = torch.tensor([[0.5, 0.0], [0.0, 0.5], [9.0, 10.0]], requires_grad=True)
    out = q.quantize(z)
    assert q.embedding.weight.grad is None and not q.embedding.weight.requires_grad
    # loss: the commitment term only
    e = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]])
    assert torch.allclose(out.loss, 0.5 * F.mse_loss(z.detach(), e))
    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[0.5, 0.5], [9.0, 10.0], [0.0, 0.0]])
    ema_counts = 0.9 * torch.ones(3) + 0.1 * counts
    ema_sums = 0.9 * torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]) + 0.1 * sums
    total = ema_counts.sum()
    smoothed = (ema_counts + 1e-5) / (total + 3e-5) * total
    assert torch.allclose(q.embedding.weight, ema_sums / smoothed[:, None], atol=1e-5)
    out.loss.backward()
    assert torch.allclose(z.grad, 0.5 * 2 * (z.detach() - e) / z.numel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_init_finds_clusters(backend):
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -6.0]])
    data = centers.repeat_interleave(40, 0) + 0.1 * torch.randn(120, 2)
    q = VectorQuantizer(3, 2, kmeans_init=True, backend=backend)
    q.train().quantize(data)
    found = sorted(q.embedding.weight.tolist())
    assert torch.allclose(torch.tensor(found), torch.tensor(sorted(centers.tolist())), atol=0.1)
    assert bool(q.initialized)


def test_kmeans_function_counts():
    data = torch.cat([torch.zeros(5, 3), torch.ones(7, 3)])
    centroids, counts = kmeans(data, 2, iters=5, generator=torch.Generator().manual_seed(1))
    assert sorted(counts.tolist()) == [5.0, 7.0]


def test_dead_code_is_restarted_from_the_batch():
    q = VectorQuantizer(4, 2, dead_code_threshold=0.5, decay=0.5)
    q.embedding.weight.data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0], [-100.0, 100.0]])
    batch = torch.tensor([[0.1, 0.0], [0.9, 1.0], [0.0, 0.1], [1.0, 0.9]])
    q.train().quantize(batch)
    weight = q.embedding.weight
    assert torch.equal(weight[:2], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))  # used codes untouched
    for row in weight[2:]:  # the far codes now sit on batch vectors
        assert (batch == row).all(dim=1).any()
    assert torch.all(q.usage_ema[2:] == 1.0)  # restarted as an average code: 4 rows / 4 codes


def test_restart_never_adopts_a_non_finite_row():
    """Outside strict mode a NaN/Inf batch row is a candidate like any other; the code it was
    drawn for stays dead instead of becoming NaN (and every later z_q with it)."""
    q = VectorQuantizer(4, 2, dead_code_threshold=10.0, decay=0.5)  # every code is dead
    far = torch.tensor([[100.0, 100.0], [-100.0, 100.0], [100.0, -100.0], [-100.0, -100.0]])
    q.embedding.weight.data = far.clone()
    batch = torch.tensor([[0.1, 0.0], [float("nan"), 0.0], [0.0, float("inf")], [1.0, 0.9]])
    q.train().quantize(batch)  # 4 rows for 4 codes: every row is some code's candidate
    weight = q.embedding.weight
    restarted = (weight != far).any(dim=1)
    assert torch.isfinite(weight).all()
    assert int(restarted.sum()) == 2  # the two finite rows were adopted, the others were not
    assert torch.all(q.usage_ema[~restarted] < 10.0) and torch.all(q.usage_ema[restarted] == 1.0)


def test_restart_keeps_backward_consistent():
    """Restarts write the codebook in place after the forward; backward still sees the
    codebook the forward used (no autograd version error, gradient of the used codes)."""
    q = VectorQuantizer(4, 2, dead_code_threshold=10.0, legacy=False)
    z = torch.randn(6, 2, requires_grad=True)
    used = q.embedding.weight.detach().clone()
    out = q.train().quantize(z)
    out.loss.backward()
    e = used[out.indices]
    expected = 2 * 0.25 * (z.detach() - e) / z.numel()  # legacy=False: beta on the commitment term
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_usage_counts_codes_within_window():
    q = VectorQuantizer(4, 1, track_usage=True, usage_window=2).train()
    q.embedding.weight.data = torch.tensor([[0.0], [10.0], [20.0], [30.0]])
    q.quantize(torch.tensor([[0.0], [10.0]]))  # step 1: codes 0, 1
    assert q.codebook_usage().item() == 0.5
    q.quantize(torch.tensor([[20.0]]))  # step 2: code 2
    assert q.codebook_usage().item() == 0.75
    out = q.quantize(torch.tensor([[20.0]]))  # step 3: codes 0/1 fall out of the window
    assert out.usage.item() == 0.25
    assert VectorQuantizer(4, 1).quantize(torch.zeros(2, 1)).usage is None  # off by default, as in taming
    with pytest.raises(RuntimeError, match="track_usage=True"):
        VectorQuantizer(4, 1).codebook_usage()


def test_eval_mode_leaves_state_alone():
    q = VectorQuantizer(4, 2, ema=True, dead_code_threshold=1.0).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.quantize(torch.randn(5, 2))
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    "call,err,msg",
    [
        (lambda q: q(torch.randn(2, 3, 4, 4)), ValueError, "channels-first"),
        (lambda q: q(torch.randn(4, 4)), ValueError, "at least 3 dimension"),
        (lambda q: q.quantize(torch.randn(4, 3)), ValueError, "last dimension e_dim=4"),
        (lambda q: q.quantize(torch.full((2, 4), float("nan"))), ValueError, "NaN"),
        (lambda q: q.quantize(torch.randn(0, 4)), ValueError, "empty"),
        (lambda q: q.get_codebook_entry(torch.tensor([9])), ValueError, r"indices must lie in \[0, 8\)"),
    ],
)
def test_bad_calls(call, err, msg):
    with strict_mode(), pytest.raises(err, match=msg):  # the NaN check runs in strict mode only
        call(VectorQuantizer(8, 4))


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(n_e=0, e_dim=4), "n_e must be an integer >= 1"),
        (dict(n_e=4, e_dim=4, metric="dot"), "metric"),
        (dict(n_e=4, e_dim=4, decay=1.5), "decay"),
        (dict(n_e=4, e_dim=4, beta=0.0, legacy=True), "beta must be > 0"),
    ],
)
def test_bad_construction(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        VectorQuantizer(**kwargs)


def test_loaded_initialised_state_skips_kmeans():
    """The step reads a host copy of ``initialized``: a load must refresh it both ways."""
    data = torch.randn(64, 2)
    trained = VectorQuantizer(4, 2, kmeans_init=True).train()
    trained.quantize(data)
    resumed = VectorQuantizer(4, 2, kmeans_init=True)
    resumed.load_state_dict(trained.state_dict())
    resumed.train().quantize(data + 100.0)  # k-means here would move every code near +100
    assert torch.equal(resumed.embedding.weight, trained.embedding.weight)
    pending = VectorQuantizer(4, 2, kmeans_init=True)
    pending.train().quantize(data)  # initialised here, then loads a state still waiting for k-means
    pending.load_state_dict(VectorQuantizer(4, 2, kmeans_init=True).state_dict())
    pending.quantize(data + 100.0)
    assert bool(pending.initialized) and (pending.embedding.weight > 90).all()
