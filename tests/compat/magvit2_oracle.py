"""Test-only oracles: Open-MAGVIT2's IBQ and LFQ quantizers and the MAGVIT-2 entropy loss
(TencentARC/Open-MAGVIT2, src/IBQ/modules/vqvae/quantize.py and
src/Open_MAGVIT2/modules/vqvae/lookup_free_quantize.py), and LlamaGen's entropy loss
(FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py), written from their formulas
with dense (N, K) torch tensors. Small shapes only; never imported by lgvq.
"""

import torch
import torch.nn.functional as F

ENTROPY_EPS = 1e-5


def entropy_terms(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MAGVIT-2's entropy pieces for logits (..., K): rows p = softmax(logits / T).

    * per-sample entropy: the mean over rows of −Σ_k p_k·log q_k, where q = softmax of the
      scaled logits plus eps — a shift of every logit, so q = p up to rounding;
    * codebook entropy: −Σ_k p̄_k·log(p̄_k + eps), p̄ the mean of the rows p (eps inside the log).
    """
    scaled = logits.flatten(0, -2) / temperature
    p = scaled.softmax(-1)
    log_q = (scaled + ENTROPY_EPS).log_softmax(-1)
    sample = -(p * log_q).sum(-1).mean()
    p_bar = p.mean(0)
    codebook = -(p_bar * torch.log(p_bar + ENTROPY_EPS)).sum()
    return sample, codebook


def ibq(z, codebook, beta=0.25, use_entropy_loss=False, temperature=0.01, sample_weight=1.0, batch_weight=1.0):
    """Open-MAGVIT2's IndexPropagationQuantize.forward on z (B, d, H, W).

    logits_k = z·e_k (no temperature); soft = softmax(logits); hard = one-hot of the argmax;
    the code mix is (hard − sg(soft) + soft), so z_q = mix·E: the value of E[argmax] with the
    gradient of soft·E. Loss: mean((z_q − z)²) + mean((sg(E[idx]) − z)²) + β·mean((E[idx] − sg z)²).
    With the entropy loss the second output is (quant loss, per-sample entropy, codebook entropy,
    w_s·per-sample − w_b·codebook) on the same logits at ``temperature``. Indices: flat (B·H·W,).
    """
    flat = z.movedim(1, -1).reshape(-1, z.shape[1])
    logits = flat @ codebook.t()
    soft = logits.softmax(-1)
    idx = soft.argmax(-1)
    hard = F.one_hot(idx, codebook.shape[0]).to(soft.dtype)
    mix = hard - soft.detach() + soft
    z_q_flat = mix @ codebook
    chosen = hard @ codebook
    loss = (
        ((z_q_flat - flat) ** 2).mean()
        + ((chosen.detach() - flat) ** 2).mean()
        + beta * ((chosen - flat.detach()) ** 2).mean()
    )
    z_q = z_q_flat.view(*z.movedim(1, -1).shape).movedim(-1, 1)
    if use_entropy_loss:
        sample, avg = entropy_terms(logits, temperature)
        loss = (loss, sample, avg, sample_weight * sample - batch_weight * avg)
    return z_q, loss, idx


def sign_codebook(bits: int) -> torch.Tensor:
    """LFQ's 2^bits codes: code k has +1 in dimension i where bit i of k is set, else −1."""
    k = torch.arange(2**bits)
    return ((k[:, None] >> torch.arange(bits)) & 1).float() * 2 - 1


def lfq(x, bits, num_codebooks=1, sample_weight=1.0, batch_weight=1.0, training=True, return_loss=True,
        mask=None, token_factorization=False, factorized_bits=(9, 9)):
    """Open-MAGVIT2's LFQ.forward(x (B, D, *spatial)), D = num_codebooks·bits.

    Each group of ``bits`` channels is quantised to its signs (0 → −1); the index of a group is
    Σ_i [x_i > 0]·2^i (with token factorisation: the first and the last factorized_bits bits as
    two indices). In training with return_loss: the entropy loss of logits 2·x·c over the
    2^bits codes c at temperature 0.01 (one average over all groups and positions; ``mask``
    is not used there), else zeros. The commitment loss mean((x − sg q)²) over the positions
    ``mask`` keeps (zero in eval). Returns ((q, entropy loss, flat indices),
    (per-sample entropy, codebook entropy, commitment)).
    """
    b = x.shape[0]
    rows = x.movedim(1, -1).reshape(b, -1, num_codebooks, bits)
    q = torch.where(rows > 0, 1.0, -1.0).to(x.dtype)
    weights = 2 ** torch.arange(bits)
    zero = torch.zeros(())
    if training and return_loss:
        sample, avg = entropy_terms(2 * rows @ sign_codebook(bits).to(x.dtype).t(), 0.01)
        aux = sample_weight * sample - batch_weight * avg
    else:
        sample = avg = aux = zero
    if training:
        sq = (rows - q.detach()) ** 2
        commit = (sq[mask] if mask is not None else sq).mean()
    else:
        commit = zero
    positive = (q > 0).long()
    if token_factorization:
        first = factorized_bits[0]
        pre = (positive[..., :first] * weights[:first]).sum(-1).flatten()
        post = (positive[..., first:] * 2 ** torch.arange(bits - first)).sum(-1).flatten()
        indices = (pre, post)
    else:
        indices = (positive * weights).sum(-1).flatten()
    st = rows + (q - rows).detach()
    out = st.reshape(b, -1, num_codebooks * bits).movedim(1, -1).reshape(x.shape)
    return (out, aux, indices), (sample, avg, commit)


def llamagen_entropy_loss(z, codebook, temperature=0.01):
    """LlamaGen's entropy loss: MAGVIT-2's (weights 1 and 1) on logits −‖z − e‖² of z (N, d)."""
    distances = (z**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * z @ codebook.t()
    sample, avg = entropy_terms(-distances, temperature)
    return sample - avg
