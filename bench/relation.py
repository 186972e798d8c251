"""Relationship-alignment loss (Lras): forward + backward w.r.t. codes.

    python -m bench.relation [--device cpu|cuda] [--quick]

Providers:
  eager          the LG-VQ release's style: a Python loop over words (similarity over the
                 M tokens, argmax, gather, scale), then the Grams; the baseline.
  vectorised     lgvq's torch reference (all words at once; the CPU path).
  lgvq triton    the fused kernels (CUDA only).
  torch.compile  torch.compile of the torch reference, when it compiles.

Shapes are the paper's (CLIP text, 16×16 grid) and a large one (77 words, 32×32 grid, Dt = 768).
FLOPs counted: the similarity (2·B·L·M·Dt), the two Grams (4·B·L²·Dt) and the backward's
D·Ĝ (2·B·L²·Dt); gathers, norms and the scatter are not counted.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
import torch.nn.functional as F

from bench.common import (
    default_device,
    format_table,
    measure,
    set_cpu_threads,
    skipped,
    triton_skip_reason,
    write_results,
)
from lgvq.ops.relation import relation_alignment_loss, relation_alignment_reference

SHAPES = [(32, 30, 256, 512), (8, 77, 1024, 768)]  # (B, L, M, Dt)


def released_style_loss(words, word_mask, tokens, codes):
    """Lras computed one word at a time, as the released LG-VQ code does."""
    batch = torch.arange(words.shape[0], device=words.device)
    w_hat = F.normalize(words, dim=-1)
    t_hat = F.normalize(tokens, dim=-1)
    picked = []
    for word in range(words.shape[1]):
        sim = torch.einsum("bmd,bd->bm", t_hat, w_hat[:, word])
        value, index = sim.max(dim=-1)
        picked.append(codes[batch, index] * value.unsqueeze(-1))
    mask = word_mask.unsqueeze(-1).to(words.dtype)
    g_hat = F.normalize(torch.stack(picked, dim=1), dim=-1) * mask
    w_masked = w_hat * mask
    p = g_hat @ g_hat.transpose(1, 2)
    q = (w_masked @ w_masked.transpose(1, 2)).detach()
    return F.mse_loss(p, q)


def make_inputs(B, L, M, Dt, device):
    """Random features; captions of random length (at least one word), as in a real batch."""
    g = torch.Generator(device="cpu").manual_seed(0)
    words = torch.randn(B, L, Dt, generator=g)
    tokens = torch.randn(B, M, Dt, generator=g)
    codes = torch.randn(B, M, Dt, generator=g)
    lengths = torch.randint(1, L + 1, (B, 1), generator=g)
    mask = (torch.arange(L).unsqueeze(0) < lengths).float()
    return [t.to(device) for t in (words, mask, tokens, codes)]


def loss_and_grad(fn, words, mask, tokens, codes):
    """One training step of the loss: forward, then backward into codes."""
    codes.grad = None
    loss = fn(words, mask, tokens, codes)
    loss.backward()
    return loss.detach(), codes.grad


def check_and_measure(name, fn, inputs, expected, device, *, flops, repeats, budget_s, note=""):
    """Check ``fn``'s loss and gradient against the reference, then time it: a benchmark
    must not time a wrong answer. The check's call also warms up (compiles, autotunes)."""
    step = partial(loss_and_grad, fn, *inputs)
    loss, grad = step()
    torch.testing.assert_close(loss, expected[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grad, expected[1], rtol=1e-3, atol=1e-3 * expected[1].abs().max().item())
    return measure(name, step, device, flops=flops, warmup=1, repeats=repeats, budget_s=budget_s, note=note)


def compiled_reference_row(inputs, expected, device, **timing):
    """torch.compile of the reference, or a row saying why it could not run here."""
    name = "torch.compile"
    compiled = torch.compile(relation_alignment_reference, dynamic=False)
    t0 = time.perf_counter()
    try:
        loss_and_grad(compiled, *inputs)
    except Exception as err:  # noqa: BLE001 - a missing toolchain or a compiler bug becomes a note
        return skipped(name, f"compile failed: {type(err).__name__}", timing["flops"])
    note = f"compiled in {time.perf_counter() - t0:.0f} s"
    return check_and_measure(name, compiled, inputs, expected, device, note=note, **timing)


def bench_shape(shape, device, *, repeats, budget_s):
    B, L, M, Dt = shape
    inputs = make_inputs(B, L, M, Dt, device)
    inputs[3].requires_grad_(True)
    timing = {"flops": 2 * B * L * M * Dt + 6 * B * L * L * Dt, "repeats": repeats, "budget_s": budget_s}
    expected = loss_and_grad(relation_alignment_reference, *inputs)
    rows = [
        check_and_measure("eager", released_style_loss, inputs, expected, device, **timing),
        check_and_measure("vectorised", relation_alignment_reference, inputs, expected, device, **timing),
    ]
    why = triton_skip_reason(device)
    if why is None:
        triton_loss = partial(relation_alignment_loss, backend="triton")
        rows.append(check_and_measure("lgvq triton", triton_loss, inputs, expected, device, **timing))
    else:
        rows.append(skipped("lgvq triton", why, timing["flops"]))
    rows.append(compiled_reference_row(inputs, expected, device, **timing))
    return format_table(f"B={B}, L={L}, M={M}, Dt={Dt} · fp32 · forward + backward", rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark relation_alignment_loss (forward + backward).")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--quick", action="store_true", help="3 timed repeats instead of 10")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed repeats per provider (min 3)")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    if device.type == "cpu":
        set_cpu_threads()
    repeats = 3 if args.quick else 10
    tables = [bench_shape(shape, device, repeats=repeats, budget_s=args.budget) for shape in SHAPES]
    write_results("relation", device, tables)


if __name__ == "__main__":
    main()
