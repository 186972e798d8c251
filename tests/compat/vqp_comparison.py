"""Comparison of a lgvq.compat face with vector-quantize-pytorch's class over a training step."""

import torch

#: Options every vqp face is compared under (each test file adds its class's own).
CODEBOOK_CASES = {
    "defaults (rotation trick)": {},
    "straight-through": dict(rotation_trick=False),
    "cosine": dict(use_cosine_sim=True),
    "projection": dict(codebook_dim=4),
    "decay and weight": dict(decay=0.5, commitment_weight=0.3, eps=1e-3),
    "learnable codebook": dict(learnable_codebook=True, ema_update=False),
    "dead codes": dict(threshold_ema_dead_code=2.0),
    "dead codes, cosine": dict(threshold_ema_dead_code=2.0, use_cosine_sim=True),
}


def step(quantizer, x, upstream, seed=1, **forward_kwargs):
    """A training forward and backward of ⟨quantized, upstream⟩ + Σ_i 2i·loss_i (losses of
    different stages weigh differently, so a swapped or dropped one shows)."""
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same draws for dead-code restarts and quantizer dropout
    quantized, indices, loss = quantizer(x, **forward_kwargs)[:3]
    weights = 2 * torch.arange(1, loss.numel() + 1, dtype=loss.dtype).view(loss.shape)
    ((quantized * upstream).sum() + (weights * loss).sum()).backward()
    grads = {name: p.grad for name, p in quantizer.named_parameters()}
    return quantized.detach(), indices, loss.detach(), x.grad, grads, quantizer.state_dict()


def compared(result) -> dict:
    """The quantities of a ``step`` result by name."""
    q, idx, loss, x_grad, grads, state = result
    out = {"quantized": q, "indices": idx, "loss": loss, "x.grad": x_grad}
    out.update({f"grad {name}": g for name, g in grads.items()})
    out.update(state)
    return out


def max_differences(ours, theirs) -> dict:
    """Largest absolute difference of every compared quantity (indices: count of mismatches)."""
    mine, reference = compared(ours), compared(theirs)
    assert mine.keys() == reference.keys()
    assert mine["indices"].shape == reference["indices"].shape and mine["quantized"].shape == reference["quantized"].shape
    out = {"indices": int((mine["indices"] != reference["indices"]).sum())}
    for name, value in mine.items():
        if name != "indices":
            out[name] = (value.float() - reference[name].float()).abs().max().item()
    return out


def assert_matches(ours, theirs, tol=1e-5):
    """Indices identical; every other quantity within ``tol`` relative to its largest magnitude
    (at least 1): the rotation trick scales a gradient by |e| / |r|, large where a residual is
    small, and float32 rounding grows with it."""
    diffs = max_differences(ours, theirs)
    assert diffs["indices"] == 0, diffs
    reference = compared(theirs)
    bad = {k: v for k, v in diffs.items() if v > tol * max(1.0, reference[k].float().abs().max().item())}
    assert not bad, bad
