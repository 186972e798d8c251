"""Nearest-code search: lgvq against the taming formula, torch.compile, and peers.

    python -m bench.nearest                    # default shape sets for the device
    python -m bench.nearest --device cpu --quick
    python -m bench.nearest --n 16384 --k 16384 --d 64 --dtype fp32

Providers (all measured in one process, so 'vs eager' compares like with like):

- eager: the taming VectorQuantizer2 formula written out: a dense N×K distance matrix
  sum(z²) + sum(e²) − 2 z·eᵀ, then argmin.
- torch.compile(eager): the same function through torch.compile (inductor).
- lgvq torch / lgvq triton: ``nearest_code(..., backend=...)``; triton needs CUDA (the CPU
  interpreter is for correctness, not speed).
- vector-quantize-pytorch: its ``VectorQuantize`` module in eval mode (cdist, argmax, the
  dense one-hot it always builds, gather) when installed.
- faiss IndexFlatL2: exact k=1 search (index built outside the timing), CPU only, when installed.
- matmul: a bare ``x @ eᵀ`` of the same shape — the GEMM the search has to do (the floor on
  GPU; on CPU it also writes the N×K result to memory, which the fused searches avoid).

Throughput counts 2·N·K·d FLOP for every provider. Every provider's indices are checked
against exact fp64 distances on a row sample; a wrong answer is flagged in the note.
"""

from __future__ import annotations

import signal
import time

import torch

from bench.common import (
    Case,
    Row,
    format_table,
    measure_many,
    shape_bench_main,
    skipped,
    triton_skip_reason,
)
from lgvq.ops.nearest import nearest_code

CPU_SHAPES = [(16384, 16384, 64), (16384, 65536, 64)]
CUDA_SHAPES = [(65536, 16384, 256), (65536, 262144, 256)]
QUICK_SHAPES = [(2048, 2048, 64)]


def eager_nearest(z: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """taming-transformers VectorQuantizer2.forward's search, verbatim in substance."""
    d = (
        torch.sum(z**2, dim=1, keepdim=True)
        + torch.sum(embedding**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", z, embedding.t())
    )
    return torch.argmin(d, dim=1)


class CompileTimeout(Exception):
    pass


def compiled_or_note(fn, example_args: tuple, timeout_s: float):
    """``torch.compile(fn)`` warmed up on ``example_args``; returns (fn, None) or (None, why)."""
    def on_alarm(signum, frame):
        raise CompileTimeout

    compiled = torch.compile(fn, dynamic=False)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(timeout_s)))
    t0 = time.perf_counter()
    try:
        compiled(*example_args)
    except CompileTimeout:
        return None, f"skipped: compile took over {timeout_s:.0f} s"
    except Exception as err:  # noqa: BLE001 - any compiler failure becomes a note
        if "out of memory" in str(err).lower():
            return None, "out of memory"
        return None, f"compile failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return compiled, f"compiled in {time.perf_counter() - t0:.0f} s"


def check_optimal(idx: torch.Tensor, x: torch.Tensor, codebook: torch.Tensor, rows: int | None = None) -> str:
    """'' when the chosen codes are optimal (within tolerance) on a row sample, else a note.

    Exact fp64 distances of the first ``rows`` vectors (default: 512, fewer for huge
    codebooks) to every code, on the inputs' device.
    """
    rows = rows or max(32, min(512, 2**25 // codebook.shape[0]))
    idx = idx.reshape(-1)[:rows].to(x.device).long()
    xs = x[:rows].detach().double()
    cb = codebook.detach().double()
    dist = (xs.pow(2).sum(1, keepdim=True) + cb.pow(2).sum(1) - 2 * xs @ cb.t()).clamp_min(0)
    best = dist.min(dim=1).values
    chosen = dist.gather(1, idx[:, None])[:, 0]
    tol = 1e-3 * (1 + best.abs()) if x.dtype == torch.float32 else 5e-2 * (1 + best.abs())
    bad = (chosen > best + tol).sum().item()
    return "" if bad == 0 else f"WRONG: {bad}/{len(idx)} sampled rows not nearest"


def vqp_module(codebook: torch.Tensor):
    """vector-quantize-pytorch's VectorQuantize holding ``codebook``, in eval mode (or None)."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None
    k, d = codebook.shape
    vq = VectorQuantize(dim=d, codebook_size=k, kmeans_init=False).to(codebook.device).eval()
    with torch.no_grad():
        vq._codebook.embed.copy_(codebook.float()[None])
    return vq


def run_shape(n: int, k: int, d: int, dtype: torch.dtype, device: torch.device, *, repeats: int,
              budget_s: float, compile_timeout: float, providers: set[str] | None) -> str:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(device, dtype)
    codebook = torch.randn(k, d, generator=gen).to(device, dtype)
    flops = 2.0 * n * k * d
    nk_bytes = n * k * x.element_size()
    entries: list[Case | Row] = []  # in table order; Rows are providers that do not run
    checks: dict[str, object] = {}  # provider -> () -> indices, checked after timing

    def want(name: str) -> bool:
        return providers is None or name in providers

    def case(name: str, fn, check=None, **kw) -> None:
        entries.append(Case(name, fn, flops=flops, repeats=repeats, **kw))
        if check is not None:
            checks[name] = check

    if want("eager"):
        case("eager", lambda: eager_nearest(x, codebook), check=lambda: eager_nearest(x, codebook),
             needs_bytes=4 * nk_bytes, warmup=1)
    if want("compile"):
        name = "torch.compile(eager)"
        fn, note = compiled_or_note(eager_nearest, (x, codebook), compile_timeout)
        if fn is None:
            entries.append(skipped(name, note, flops))
        else:
            case(name, lambda: fn(x, codebook), check=lambda: fn(x, codebook), note=note,
                 needs_bytes=4 * nk_bytes, warmup=1)
    if want("torch"):
        case("lgvq torch", lambda: nearest_code(x, codebook, backend="torch"),
             check=lambda: nearest_code(x, codebook, backend="torch")[0])
    if want("triton"):
        why = triton_skip_reason(device)
        if why is not None:
            entries.append(skipped("lgvq triton", why, flops))
        else:
            case("lgvq triton", lambda: nearest_code(x, codebook, backend="triton"),
                 check=lambda: nearest_code(x, codebook, backend="triton")[0])
    if want("vqp"):
        name = "vector-quantize-pytorch"
        vq = vqp_module(codebook)
        if vq is None:
            entries.append(skipped(name, "not installed", flops))
        else:
            def vqp_call():
                with torch.no_grad():
                    return vq(x.float()[None])[1]
            case(name, vqp_call, check=vqp_call, note="VectorQuantize eval: cdist + dense one-hot",
                 needs_bytes=5 * n * k * 4, warmup=1)
    if want("faiss"):
        name = "faiss IndexFlatL2"
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is None:
            entries.append(skipped(name, "not installed", flops))
        elif device.type != "cpu":
            entries.append(skipped(name, "faiss-cpu: CPU only (no faiss GPU build here)", flops))
        else:
            faiss.omp_set_num_threads(torch.get_num_threads())
            index = faiss.IndexFlatL2(d)
            index.add(codebook.float().numpy())
            xn = x.float().numpy()
            case(name, lambda: index.search(xn, 1), check=lambda: torch.from_numpy(index.search(xn, 1)[1]),
                 note=f"k=1, {faiss.omp_get_max_threads()} OpenMP threads; index built outside the timing")
    if want("matmul"):
        name = "matmul floor" if device.type == "cuda" else "matmul (x @ eᵀ only)"
        case(name, lambda: torch.matmul(x, codebook.t()), needs_bytes=nk_bytes,
             note="GEMM only, writes N×K" if device.type == "cpu" else "GEMM only")

    measured = iter(measure_many([e for e in entries if isinstance(e, Case)], device, budget_s=budget_s))
    rows = [e if isinstance(e, Row) else next(measured) for e in entries]
    for row in rows:
        if row.seconds is not None and row.provider in checks:
            problem = check_optimal(checks[row.provider](), x, codebook)
            row.note = "; ".join(s for s in (row.note, problem) if s)
    torch._dynamo.reset()

    title = f"N={n:,}, K={k:,}, d={d} · {str(dtype).removeprefix('torch.')} · index + distance"
    also = ("faiss IndexFlatL2",) if any(r.provider == "faiss IndexFlatL2" and r.seconds for r in rows) else ()
    return format_table(title, rows, also=also)


def main(argv: list[str] | None = None) -> list[str]:
    def shape(n, k, d, dtype, device, *, first, **options):
        return run_shape(n, k, d, dtype, device, **options)

    return shape_bench_main("nearest", __doc__.split("\n")[0], shape,
                            {"quick": QUICK_SHAPES, "cpu": CPU_SHAPES, "cuda": CUDA_SHAPES}, "eager,compile,torch,triton,vqp,faiss,matmul", argv)


if __name__ == "__main__":
    main()
