"""The EMA codebook update with its Laplace smoothing, from the first step on.

The smoothing only shows while the EMA counts are small (early steps, rare codes): a test on
counts near 1 with the default eps cannot tell it from a plain S/N. Here two codes are never
chosen, so their counts halve at every step (decay 0.5), and eps is large enough to matter
from step one. Both quantizers that keep EMA statistics (VectorQuantizer(ema=True) and the
vector-quantize-pytorch face) follow the update as stated below, step by step.
"""

import pytest
import torch

from lgvq.compat import VectorQuantize
from lgvq.quantize import VectorQuantizer

DECAY, EPS = 0.5, 0.1
#: two codes the data visits, two it never does
CODES = torch.tensor([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 5.0, 5.0], [0.0, -5.0, -5.0]])


class EmaCodebook:
    """The update in this test's words (van den Oord et al. 2017, appendix A.1, with Sonnet's
    Laplace smoothing). Counts start at 1 and sums at the codes, as both quantizers do.

    Per step, with n_k vectors choosing code k and s_k their sum:
        N_k ← γ N_k + (1 − γ) n_k,  S_k ← γ S_k + (1 − γ) s_k,
        Ñ_k = (N_k + ε) · Σ_j N_j / (Σ_j N_j + K ε),  code_k = S_k / Ñ_k.
    """

    def __init__(self, codes: torch.Tensor):
        self.codes = codes.clone()
        self.counts = torch.ones(len(codes))
        self.sums = codes.clone()

    def step(self, vectors: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(vectors, self.codes).argmin(dim=1)
        chosen = torch.nn.functional.one_hot(nearest, len(self.codes)).float()  # (n, K)
        self.counts = DECAY * self.counts + (1 - DECAY) * chosen.sum(0)
        self.sums = DECAY * self.sums + (1 - DECAY) * chosen.T @ vectors
        total = self.counts.sum()
        smoothed = (self.counts + EPS) * total / (total + len(self.codes) * EPS)
        self.codes = self.sums / smoothed[:, None]
        return self.codes


def batches(steps: int = 4, per_code: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.cat([CODES[k] + 0.3 * torch.randn(per_code, 3, generator=gen) for k in (0, 1)])
            for _ in range(steps)]


def lgvq_quantizer():
    q = VectorQuantizer(4, 3, beta=0.25, ema=True, decay=DECAY, eps=EPS).train()
    with torch.no_grad():
        q.embedding.weight.copy_(CODES)
        q.ema_sums.copy_(CODES)
    return q, lambda x: q.quantize(x), lambda: q.embedding.weight


def vqp_face():
    q = VectorQuantize(dim=3, codebook_size=4, decay=DECAY, eps=EPS).train()
    with torch.no_grad():
        q._codebook.embed.copy_(CODES[None])
        q._codebook.embed_avg.copy_(CODES[None])
    return q, lambda x: q(x[None]), lambda: q.codebook


@pytest.mark.parametrize("make", [lgvq_quantizer, vqp_face], ids=["VectorQuantizer(ema=True)", "compat.VectorQuantize"])
def test_every_step_is_the_laplace_smoothed_ema(make):
    _, forward, codebook = make()
    oracle = EmaCodebook(CODES)
    for step, vectors in enumerate(batches(), start=1):
        forward(vectors)
        expected = oracle.step(vectors)
        torch.testing.assert_close(codebook().detach(), expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"step {step}: {m}")
    # the smoothing mattered: the unvisited codes moved off their plain S/N (the codes themselves)
    assert not torch.allclose(expected[2:], CODES[2:], rtol=1e-3)
