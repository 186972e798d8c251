"""Two CPU processes over gloo: the quantizers' non-gradient state stays bit-identical on every
rank, EMA over ranks equals one process fed the global batch, and a restart that one rank's data
alone calls for — or an evaluation on one rank only — finishes instead of hanging.

All scenarios run in one spawn of two processes (start-up dominates the cost); each test checks
its scenario's results. Bounded timeouts turn a hang into a failure: gloo's collective timeout
inside the workers, and a deadline on the spawn outside them.
"""

import datetime
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lgvq.compat import LFQ, IndexPropagationQuantize
from lgvq.quantize import ClusteredVectorQuantizer, VectorQuantizer

WORLD = 2
STEPS = 4
COLLECTIVE_TIMEOUT_S = 60
SPAWN_TIMEOUT_S = 180  # start-up of two interpreters on a loaded machine plus one collective timeout

pytestmark = pytest.mark.slow  # the spawn of two interpreters: ~6-12 s on 2 cores


# ---- scenarios: each runs on every rank and returns what the tests compare ----------------------

def make_ema_quantizer() -> VectorQuantizer:
    return VectorQuantizer(
        16, 3, ema=True, kmeans_init=True, dead_code_threshold=0.5, decay=0.9, track_usage=True
    ).train()


def global_batches() -> torch.Tensor:
    """(STEPS, WORLD·12, 3): every rank builds the same global batches and takes its contiguous share."""
    return torch.randn(STEPS, WORLD * 12, 3, generator=torch.Generator().manual_seed(1))


def uneven_batches() -> list[torch.Tensor]:
    """Codes sit at (10·i, 0); rank 0 holds 3 rows at code 0, rank 1 holds 17 rows over codes 0…5.

    Global counts (6, 3, 3, 3, 3, 2, 0, 0): with decay 0.5 and threshold 0.5 only codes 6 and 7
    are dead, though rank 0's data alone would call codes 1…7 dead.
    """
    return [torch.zeros(3, 2), torch.stack([torch.tensor([10.0 * (i % 6), 0.1]) for i in range(17)])]


def spaced_codes() -> torch.Tensor:
    return torch.stack([torch.tensor([10.0 * i, 0.0]) for i in range(8)])


def _record_restarts(q: VectorQuantizer) -> list[int]:
    """The number of dead codes seen by each restart call on ``q`` (its method, wrapped)."""
    calls = []
    restart = q._restart_dead_codes

    def recording(flat, counts):
        calls.append(int((q.usage_ema < q.dead_code_threshold).sum()))
        restart(flat, counts)

    q._restart_dead_codes = recording
    return calls


def ema_kmeans_restarts(rank: int) -> dict:
    torch.manual_seed(10 + rank)  # different initial codebooks, data and random draws per rank
    q = make_ema_quantizer()
    restarts = _record_restarts(q)
    for _ in range(STEPS):
        q.quantize(torch.randn(24, 3) * (1 + rank))
    return {"state": q.state_dict(), "restarts": restarts}


def cvq_steps(rank: int) -> dict:
    torch.manual_seed(0)  # one initial codebook, as DDP's parameter broadcast would give
    q = ClusteredVectorQuantizer(16, 3, contrastive=True, dead_code_threshold=0.5, track_usage=True).train()
    torch.manual_seed(10 + rank)
    for _ in range(STEPS):
        q.quantize(torch.randn(24, 3) + rank).loss.backward()
    return {"state": q.state_dict()}


def ema_on_shares(rank: int) -> dict:
    torch.manual_seed(0)  # rank 0's draws (k-means seeds, restart rows) are broadcast: match the reference's
    q = make_ema_quantizer()
    for batch in global_batches():
        q.quantize(batch.chunk(WORLD)[rank])
    return {"state": q.state_dict()}


def uneven_restart(rank: int) -> dict:
    torch.manual_seed(10 + rank)
    q = VectorQuantizer(8, 2, dead_code_threshold=0.5, decay=0.5).train()
    q.embedding.weight.data.copy_(spaced_codes())
    restarts = _record_restarts(q)
    q.quantize(uneven_batches()[rank])
    return {"weight": q.embedding.weight.detach().clone(), "restarts": restarts}


def evaluate_on_rank_zero(rank: int) -> dict:
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2, ema=True, dead_code_threshold=0.5, track_usage=True).train()
    if rank == 0:  # e.g. a validation pass on rank 0 only: must not enter a collective
        q.eval().quantize(torch.randn(5, 2))
        q.train()
    torch.manual_seed(10 + rank)
    q.quantize(torch.randn(6, 2) + rank)
    return {"state": q.state_dict()}


def softmax_quantizers(global_entropy: bool) -> dict:
    """IBQ (with the entropy loss) and LFQ, built alike on every rank (seeded)."""
    torch.manual_seed(0)
    return {
        "ibq": IndexPropagationQuantize(13, 4, use_entropy_loss=True, entropy_temperature=0.1,
                                        global_entropy=global_entropy, backend="torch").double(),
        "lfq": LFQ(dim=4, codebook_size=16, global_entropy=global_entropy, backend="torch").train(),
    }


def softmax_batch() -> torch.Tensor:
    """(1, 4, WORLD·6): one global batch of 4-channel vectors; rank r holds columns 6r … 6r + 5."""
    return torch.randn(1, 4, WORLD * 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def softmax_step(quantizer, x: torch.Tensor) -> dict:
    """A forward of the peer face and the backward of its mean-type losses: the entropy terms'
    values and the gradients to x and, for IBQ, the codebook."""
    x = x.detach().clone().requires_grad_(True)
    if isinstance(quantizer, LFQ):
        (_, aux, _), (sample, avg, commit, _) = quantizer(x, return_loss_breakdown=True)
        total = aux + commit
    else:
        _, (quant, sample, avg, entropy), _ = quantizer(x)
        total = quant + entropy
    total.backward()
    grads = {name: p.grad for name, p in quantizer.named_parameters()}
    return {"sample": sample.detach(), "avg": avg.detach(), "dx": x.grad, **grads}


def global_softmax_entropy(rank: int) -> dict:
    share = softmax_batch().chunk(WORLD, dim=2)[rank]
    return {name: softmax_step(q, share) for name, q in softmax_quantizers(global_entropy=True).items()}


def per_device_softmax_entropy(rank: int) -> dict:
    share = softmax_batch().chunk(WORLD, dim=2)[rank]
    return {name: softmax_step(q, share) for name, q in softmax_quantizers(global_entropy=False).items()}


SCENARIOS = [
    ema_kmeans_restarts, cvq_steps, ema_on_shares, uneven_restart, evaluate_on_rank_zero, global_softmax_entropy,
    per_device_softmax_entropy,
]


# ---- spawning --------------------------------------------------------------------------------

def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        torch.set_num_threads(1)  # two ranks on a small machine: no oversubscription
        results = {scenario.__name__: scenario(rank) for scenario in SCENARIOS}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_dir: Path) -> list[dict]:
    """Run every scenario on WORLD processes; each rank's results, or a test failure on timeout."""
    context = mp.spawn(_worker, args=(str(tmp_dir / "store"), str(tmp_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):  # raises if a rank failed
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"ranks did not finish within {SPAWN_TIMEOUT_S} s (a collective hang?)")
    return [torch.load(tmp_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(tmp_path_factory.mktemp("ranks"))


def assert_identical_states(states: list[dict]) -> None:
    for key, value in states[0].items():
        for other in states[1:]:
            assert torch.equal(other[key], value), f"{key} differs between ranks"


# ---- tests -----------------------------------------------------------------------------------

def test_ema_kmeans_restarts_keep_ranks_identical(ranks):
    results = [r["ema_kmeans_restarts"] for r in ranks]
    assert_identical_states([r["state"] for r in results])
    assert results[0]["restarts"] == results[1]["restarts"]
    assert sum(results[0]["restarts"]) > 0  # the restart path ran, on both ranks alike
    assert int(results[0]["state"]["step"]) == STEPS and bool(results[0]["state"]["initialized"])


def test_cvq_keeps_ranks_identical(ranks):
    states = [r["cvq_steps"]["state"] for r in ranks]
    assert_identical_states(states)
    assert int(states[0]["step"]) == STEPS


def test_ema_over_ranks_matches_one_process_on_the_global_batch(ranks):
    torch.manual_seed(0)
    reference = make_ema_quantizer()
    for batch in global_batches():
        reference.quantize(batch)
    for rank_result in ranks:
        state = rank_result["ema_on_shares"]["state"]
        for key, expected in reference.state_dict().items():
            if expected.is_floating_point():  # counts and sums were summed in another order
                assert torch.allclose(state[key], expected, rtol=1e-5, atol=1e-6), key
            else:
                assert torch.equal(state[key], expected), key


def test_restart_decided_from_global_usage_on_every_rank(ranks):
    results = [r["uneven_restart"] for r in ranks]
    assert results[0]["restarts"] == results[1]["restarts"] == [2]  # not rank 0's local 7
    weight = results[0]["weight"]
    assert torch.equal(results[1]["weight"], weight)
    assert torch.equal(weight[:6], spaced_codes()[:6])
    pool = torch.cat(uneven_batches())
    for row in weight[6:]:  # restarted from the rows of both ranks
        assert (pool == row).all(dim=1).any()


def test_evaluation_on_one_rank_enters_no_collective(ranks):
    states = [r["evaluate_on_rank_zero"]["state"] for r in ranks]
    assert_identical_states(states)
    assert int(states[0]["step"]) == 1


@pytest.mark.parametrize("name", ["ibq", "lfq"])
def test_global_entropy_gives_every_rank_the_global_batch_gradient(ranks, name):
    """Under DDP (gradients averaged over ranks) each rank's update is the single-process one on
    the global batch: the codebook gradient averaged over ranks, and each rank's input gradient
    / WORLD (its losses are means over its share), equal the single process's."""
    reference = softmax_step(softmax_quantizers(global_entropy=True)[name], softmax_batch())
    results = [r["global_softmax_entropy"][name] for r in ranks]
    for result in results:  # the entropies of the global batch, on every rank
        torch.testing.assert_close(result["sample"], reference["sample"])
        torch.testing.assert_close(result["avg"], reference["avg"])
    shares = reference["dx"].chunk(WORLD, dim=2)
    for result, share in zip(results, shares):
        torch.testing.assert_close(result["dx"] / WORLD, share)
    for key in set(reference) - {"sample", "avg", "dx"}:
        torch.testing.assert_close(sum(r[key] for r in results) / WORLD, reference[key])


def test_per_device_entropy_is_the_peers(ranks):
    """Without global_entropy each rank's codebook entropy is that of its own share."""
    for rank, result in enumerate(ranks):
        share = softmax_batch().chunk(WORLD, dim=2)[rank]
        for name, q in softmax_quantizers(global_entropy=False).items():
            expected = softmax_step(q, share)
            torch.testing.assert_close(result["per_device_softmax_entropy"][name]["avg"], expected["avg"])
            torch.testing.assert_close(result["per_device_softmax_entropy"][name]["dx"], expected["dx"])
