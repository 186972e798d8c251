"""Compile gate: build every Triton kernel variant lgvq's launchers can choose for a GPU
architecture, on a machine without a GPU, and check that each one can launch there.

    python -m bench.compile_check --arch 90            # H100/H200; writes bench/results/compile-sm90.md
    python -m bench.compile_check --arch 80            # A100
    python -m bench.compile_check --arch 90 --subset ci --table /tmp/t.md   (what the test suite runs)
    python -m bench.compile_check --arch 90 --families nearest --table /tmp/n.md   (one family)

A table's ``## Notes`` section (hand-written, at its end) survives a rerun.

How: the launchers in ``kernels/`` run for real on meta tensors while triton's launch
entry points are replaced by recorders (``capture_launches``), so the recorded launches
are exactly what the launchers would send: the same arguments, the same constexprs and,
for autotuned kernels, every config the launcher's own prune keeps for the target
architecture's shared-memory limit. Each distinct launch then goes through triton's own
argument binder and ``triton.compile(ASTSource, target=GPUTarget("cuda", arch, 32))``;
the bundled ptxas reports registers and spills (``-v``), triton's metadata the shared
memory, and the PTX which instructions the dots became (wgmma, mma.sync or FMA).

The gate fails (exit status 1) when a recorded variant
  * does not compile,
  * needs more shared memory than the architecture's per-block limit (it could not launch),
  * needs more shared memory than ``kernels.nearest.shared_memory_bytes`` predicted (the
    launcher's prune could then keep configs that cannot launch),
  * spills more than ``SPILL_BOUND`` bytes (ptxas spill stores + loads; ptxas caps
    registers at 255, so spilling is what "too many registers" looks like),
  * computes addresses of the nearest or quantize kernels with 32-bit tensor multiplies
    (``rows * stride`` wraps once N·d ≥ 2^31),
  * uses acquire/release atomics (a memory fence per element; the sums need none),
or when some (dtype, d), for every d from 1 to 4096, has no config that the resource
model says fits.

Results are cached per variant under ``--cache`` (default ~/.cache/lgvq/compile_check),
keyed on triton's version, triton's hash of the kernel's code and the launch, so a rerun
after an unrelated change compiles nothing. Compiles run in ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import pathlib
import re
import sys
import time

if __name__ == "__main__":  # GPU configs and GPU code, not the interpreter's (set before triton loads)
    os.environ.pop("TRITON_INTERPRET", None)
    sys.dont_write_bytecode = True

import torch  # noqa: E402
import triton  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, MockTensor  # noqa: E402

from lgvq import kernels as lgvq_kernels  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Spill stores + loads (bytes) above which a variant fails the gate. A few bytes of spill
#: traffic in a loop prologue are harmless; hundreds per thread in the loop are not.
SPILL_BOUND = 256
#: The launch-time dims the gate compiles; ``ci`` keeps one d per loop shape and dtype class.
DIMS = (8, 64, 256, 300, 1024)
MODEL_DIMS = range(1, 4097)
#: dtype label → (torch dtype, torch float32_matmul_precision while launching).
MODES = {
    "fp32-tf32x3": (torch.float32, "highest"),
    "fp32-tf32": (torch.float32, "high"),
    "fp16": (torch.float16, "highest"),
    "bf16": (torch.bfloat16, "highest"),
}
#: The CI subset: each nearest loop shape (x held whole, d tiled) for both fp32 precisions
#: and a 16-bit dtype, and the row kernels' one- and multi-tile d loops.
CI_NEAREST = {"fp32-tf32x3": (64, 256), "fp32-tf32": (64, 256), "bf16": (256, 300)}
CI_ROWS = {"fp32-tf32x3": (300,), "bf16": (64,)}
#: The codebook softmax holds whole rows (``kernels.softmax.MAX_D``: 64 fp32, 256 16-bit); 18 is
#: LFQ's 2^18 codes.
SOFTMAX_DIMS = {"fp32-tf32x3": (18, 64), "fp32-tf32": (18, 64), "fp16": (64, 256), "bf16": (18, 64, 256)}
CI_SOFTMAX = {"fp32-tf32x3": (18, 64), "bf16": (64, 256)}
CHECK_OFFSETS = ("_nearest_kernel", "_gather_sqerr_kernel", "_quantize_backward_kernel",
                 "_counts_sums_kernel", "_segment_sum_sorted_kernel", "_residual_kernel")
#: The fused residual kernel holds rows of up to 128 elements: factorised audio codes (d = 8)
#: to an audio codec's d = 128 (wider rows search stage by stage with the nearest kernel).
RESIDUAL_DIMS = (8, 64, 128)


# --------------------------------------------------------------------------- recording launches

@dataclasses.dataclass
class Launch:
    """One compile the launchers can ask for: kernel name, positional args (MockTensors
    and ints), constexprs and options (num_warps, num_stages), and what it is for."""

    kernel: str
    args: tuple
    kwargs: dict
    label: dict
    model_smem: int | None = None

    def key(self) -> str:
        args = [("T", str(a.dtype)) if isinstance(a, MockTensor) else a for a in self.args]
        return json.dumps([self.kernel, args, sorted(self.kwargs.items())], default=str)


def _mock(value):
    return MockTensor(value.dtype, list(value.shape)) if isinstance(value, torch.Tensor) else value


def _jit_function(fn) -> JITFunction:
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


@contextlib.contextmanager
def capture_launches(arch: int):
    """Record, instead of running, every kernel launch made inside the block.

    Autotuned kernels record one launch per config their prune keeps (with the target
    arch's shared-memory limit); the launcher then continues as if the first had won.
    """
    from lgvq.kernels import nearest

    launches: list[Launch] = []
    label: dict = {}
    saved = (JITFunction.run, Autotuner.run, nearest.DEFAULT_ARCH)

    def record(fn, args, kwargs, model_smem=None):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        launches.append(Launch(_jit_function(fn).__name__, tuple(_mock(a) for a in args), kwargs,
                               dict(label), model_smem))

    def jit_run(self, *args, grid, warmup=False, **kwargs):
        record(self, args, kwargs)

    def autotuner_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.prune_configs(kwargs)
        for config in configs:
            record(self.fn, args, {**kwargs, **config.all_kwargs()}, _nearest_model(self, config, kwargs))
        self.best_config = configs[0]
        if callable(kwargs["grid"]):  # evaluated for the winner, as its launch would (the nearest launcher reads it)
            kwargs["grid"]({**self.nargs, **kwargs, **configs[0].all_kwargs()})
        self.nargs = None

    def _nearest_model(tuner, config, kwargs):
        if _jit_function(tuner.fn).__name__ == "_residual_kernel":  # the same model, x held whole
            e = tuner.nargs["e_ptr"]
            return nearest.shared_memory_bytes(config, kwargs["BLOCK_D"], True, e.element_size(), kwargs["PRECISION"])
        if _jit_function(tuner.fn).__name__ != "_nearest_kernel":
            return None
        x = tuner.nargs["x_ptr"]
        return nearest.shared_memory_bytes(
            config, kwargs["BLOCK_D"], kwargs["SINGLE_D"], x.element_size(), kwargs["PRECISION"]
        )

    JITFunction.run, Autotuner.run = jit_run, autotuner_run
    nearest.DEFAULT_ARCH = arch
    try:
        yield launches, label
    finally:
        JITFunction.run, Autotuner.run, nearest.DEFAULT_ARCH = saved


def _nearest_launches(mode: str, d: int, label: dict):
    from lgvq.kernels.nearest import nearest_code_search

    dtype = MODES[mode][0]
    shapes = ((65536, 16384), (4099, 1037)) if label["subset"] == "full" else ((65536, 16384),)
    for n, k in shapes:  # multiples of 16, and not (another integer specialisation)
        label["shape"] = f"N={n} K={k}"
        x = torch.empty(n, d, device="meta", dtype=dtype)
        e = torch.empty(k, d, device="meta", dtype=dtype)
        nearest_code_search(x, e, torch.empty(k, device="meta"))


def _row_launches(mode: str, d: int, label: dict):
    from lgvq.kernels.quantize import code_counts_and_sums, gather_and_sqerr, quantize_backward

    dtype = MODES[mode][0]
    n, k = 65536, 16384
    z = torch.empty(n, d, device="meta", dtype=dtype)
    e = torch.empty(k, d, device="meta", dtype=dtype)
    idx = torch.empty(n, device="meta", dtype=torch.int64)
    label["shape"] = f"N={n} K={k}"
    gather_and_sqerr(z, e, idx)
    for deterministic in (False, True):
        label["shape"] = f"N={n} K={k}" + (" deterministic" if deterministic else "")
        with _deterministic(deterministic):
            for code_grad in (True, False):
                quantize_backward(z, e, idx, z, torch.empty(1, device="meta"), 0.25, code_grad)
            code_counts_and_sums(z, idx, k)


def _relation_launches(mode: str, d: int, label: dict):
    from lgvq.kernels.relation import relation_backward, relation_forward

    dtype = MODES[mode][0]
    shapes = ((8, 30, 256), (8, 77, 1024)) if label["subset"] == "full" else ((8, 77, 1024),)
    for B, L, M in shapes:  # the paper's captions, CLIP's context length
        label["shape"] = f"B={B} L={L} M={M}"
        words = torch.empty(B, L, d, device="meta", dtype=dtype)
        tokens = torch.empty(B, M, d, device="meta", dtype=dtype)
        mask = torch.empty(B, L, device="meta")
        loss, state = relation_forward(words, mask, tokens, tokens, 1e-12)
        relation_backward(tokens, state, torch.empty((), device="meta"))


def _softmax_launches(mode: str, d: int, label: dict):
    from lgvq.kernels.softmax import probability_sums, softmax_backward, softmax_forward

    dtype = MODES[mode][0]
    n, k = 65536, 262144
    z = torch.empty(n, d, device="meta", dtype=dtype)
    e = torch.empty(k, d, device="meta", dtype=dtype)
    lse, bias, scalar = torch.empty(n, device="meta"), torch.empty(k, device="meta"), torch.empty((), device="meta")
    for codes, b, case in ((e, None, "dot"), (e, bias, "l2"), (None, None, "lfq")):
        if codes is None and d > 24:  # LFQ: d bits, 2^d codes
            continue
        label["shape"] = f"N={n} K={k if codes is not None else 2**d} {case}"
        softmax_forward(z, codes, b, 1.0, attend=codes is not None, entropy=codes is None)
        softmax_forward(z, codes, b, 1.0, attend=False, entropy=True)
        probability_sums(z, codes, b, 1.0, lse)
        softmax_backward(z, codes, b, 1.0, lse, grad_entropy=scalar, grad_sums=bias, code_grad=True)
        if codes is not None:
            softmax_backward(z, codes, b, 1.0, lse, soft=z, grad_soft=z, code_grad=True)


def _residual_launches(mode: str, d: int, label: dict):
    from lgvq.kernels.residual import fits_on_chip, residual_search

    dtype = MODES[mode][0]
    if not fits_on_chip(d, dtype):  # lgvq.ops.residual searches these stage by stage (nearest family)
        return
    shapes = ((16384, 8, 1024), (16384, 32, 1024), (65536, 4, 16384)) if label["subset"] == "full" else ((16384, 8, 1024),)
    for n, stages, k in shapes:  # audio codecs (L = 8, 32), an image tokenizer
        x = torch.empty(n, d, device="meta", dtype=dtype)
        codes = torch.empty(stages, k, d, device="meta", dtype=dtype)
        for cos in (False, True):
            label["shape"] = f"N={n} L={stages} K={k}" + (" cos" if cos else "")
            residual_search(x, codes, torch.empty(stages, k, device="meta"), cos)


@contextlib.contextmanager
def _deterministic(on: bool):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


FAMILIES = ("nearest", "rows", "relation", "residual", "softmax")


def plan(arch: int, subset: str, families=FAMILIES) -> list[Launch]:
    """Every distinct launch of the selected (kernel family, dtype, d) cases."""
    if subset == "ci":
        cases = [("nearest", m, d) for m, dims in CI_NEAREST.items() for d in dims]
        cases += [("rows", m, d) for m, dims in CI_ROWS.items() for d in dims]
        cases += [("relation", "fp32-tf32x3", 768), ("residual", "fp32-tf32x3", 128), ("residual", "bf16", 8)]
        cases += [("softmax", m, d) for m, dims in CI_SOFTMAX.items() for d in dims]
    else:
        cases = [(fam, m, d) for fam in ("nearest", "rows") for m in MODES for d in DIMS]
        cases += [("relation", m, d) for m in MODES for d in (300, 768)]
        cases += [("residual", m, d) for m in MODES for d in RESIDUAL_DIMS]
        cases += [("softmax", m, d) for m, dims in SOFTMAX_DIMS.items() for d in dims]
    cases = [case for case in cases if case[0] in families]
    makers = {"nearest": _nearest_launches, "rows": _row_launches, "relation": _relation_launches,
              "residual": _residual_launches, "softmax": _softmax_launches}
    unique: dict[str, Launch] = {}
    with capture_launches(arch) as (launches, label):
        for family, mode, d in cases:
            label.clear()
            label.update(family=family, mode=mode, d=d, subset=subset)
            torch.set_float32_matmul_precision(MODES[mode][1])
            try:
                makers[family](mode, d, label)
            finally:
                torch.set_float32_matmul_precision("highest")
    for launch in launches:
        unique.setdefault(launch.key(), launch)
    return list(unique.values())


# --------------------------------------------------------------------------- compiling one

def _ptxas_usage(log: str) -> dict:
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {
        "regs": int(regs.group(1)) if regs else None,
        "spill": int(spills.group(1)) + int(spills.group(2)) if spills else None,
    }


def mma_kind(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma.sync"
    return "fma"


_LABEL = re.compile(r"^(\$L__\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__\w+);")
_MMA = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync)\b")
_WAIT = re.compile(r"\b(?:wgmma\.wait_group|cp\.async\.wait_group|cp\.async\.wait_all|cp\.async\.bulk\.wait_group"
                   r"|mbarrier\.try_wait|bar\.sync|barrier\.sync)\b")
#: A copy of operand data: an asynchronous copy, or a 16-byte global load (a code tile's rows
#: read into registers; the loop's |e|² loads are at most 8 bytes per thread and instruction).
_COPY = re.compile(r"\bcp\.async\b|\bld\.global[\w:.]*\.v4\.")
_COPY_WAIT_DEPTH = re.compile(r"\bcp\.async\.wait_group\s+(\d+)")


def loop_mix(ptx: str) -> dict:
    """The instruction mix of the outermost PTX loop that issues MMAs (the code-tile loop):
    ``loop_instrs`` PTX instructions per iteration, of which ``loop_mma`` tensor-core MMAs,
    ``loop_waits`` waits (MMA completion, async-copy groups, barriers), ``loop_copies`` copies
    (asynchronous, or 16-byte loads into registers) and ``loop_other`` the rest (the argmin
    epilogue and addressing, on the CUDA cores). Where the copies sit: ``copy_first``, a copy
    is issued before the iteration's first MMA (it is in flight while this tile's MMA and
    epilogue run); ``in_flight``, how many copy groups the loop's asynchronous-copy wait
    leaves outstanding (``num_stages - 2`` for Triton's pipeliner; None without one). Empty
    when no loop issues an MMA."""
    lines = [line.strip() for line in ptx.splitlines()]
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    loops = []
    for j, line in enumerate(lines):
        m = _BRANCH.search(line)
        if m and labels.get(m.group(1), j) < j:
            body = [x for x in lines[labels[m.group(1)] + 1:j + 1] if x.endswith(";") and not x.startswith((".", "//"))]
            if any(_MMA.search(x) for x in body):
                loops.append(body)
    if not loops:
        return {}
    body = max(loops, key=len)
    kinds = ["mma" if _MMA.search(x) else "wait" if _WAIT.search(x) else "copy" if _COPY.search(x) else "other"
             for x in body]
    first = {k: kinds.index(k) if k in kinds else len(kinds) for k in ("mma", "copy")}
    depth = next((int(m.group(1)) for x in body if (m := _COPY_WAIT_DEPTH.search(x))), None)
    return {"loop_instrs": len(kinds), "loop_mma": kinds.count("mma"), "loop_waits": kinds.count("wait"),
            "loop_copies": kinds.count("copy"), "loop_other": kinds.count("other"),
            "copy_first": first["copy"] < first["mma"], "in_flight": depth}


#: A PTX atomic or reduction with acquire/release ordering: a memory fence per element.
_ORDERED_ATOMIC = re.compile(r"\b(?:atom|red)\.[\w.]*(?:acq_rel|acquire|release)")


def ordered_atomics(ptx: str) -> int:
    return len(_ORDERED_ATOMIC.findall(ptx))


#: A TTIR multiply of 32-bit integer tensors: ``arith.muli %a, %b : tensor<16x64xi32>``.
_I32_TENSOR_MUL = re.compile(r"arith\.muli [^\n]*: tensor<[0-9x]+xi32>")


def i32_tensor_multiplies(ttir: str) -> int:
    return len(_I32_TENSOR_MUL.findall(ttir))


def _kernel_function(name: str) -> JITFunction:
    from lgvq.kernels import nearest, quantize, relation, residual, softmax

    for module in (nearest, quantize, relation, residual, softmax):
        if hasattr(module, name):
            return _jit_function(getattr(module, name))
    raise KeyError(name)


def compile_launch(job: tuple[int, Launch]) -> dict:
    """Compile one launch for the arch; the record the table and the checks read."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    arch, launch = job
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True  # a cache hit would print no ptxas log
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = _kernel_function(launch.kernel)
    rec = {"kernel": launch.kernel, **launch.label, "model_smem": launch.model_smem,
           "config": _config_text(launch.kwargs),
           "num_warps": launch.kwargs.get("num_warps", 4), "num_stages": launch.kwargs.get("num_stages", 3)}
    start = time.time()
    try:
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*launch.args, **launch.kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
        rec.update(loop_mix(compiled.asm["ptx"]) if launch.kernel == "_nearest_kernel" else {})
        rec.update(ok=True, smem=compiled.metadata.shared, mma=mma_kind(compiled.asm["ptx"]),
                   i32_muls=i32_tensor_multiplies(compiled.asm["ttir"]),
                   ordered_atomics=ordered_atomics(compiled.asm["ptx"]), **_ptxas_usage(log.getvalue()))
    except Exception as err:  # noqa: BLE001 - a failed compile is a result of the gate
        rec.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000])
    rec["compile_s"] = round(time.time() - start, 2)
    return rec


def _config_text(kwargs: dict) -> str:
    names = ("BLOCK_N", "BLOCK_K", "BLOCK_L", "BLOCK_M", "BLOCK_D", "WORDS", "SINGLE_D", "CODE_GRAD", "PRECISION",
             "BIASED", "SCHEDULE")
    return " ".join(f"{n}={kwargs[n]}" for n in names if n in kwargs)


# --------------------------------------------------------------------------- checks

def problems(rec: dict, limit: int) -> list[str]:
    """Why this variant fails the gate (empty: it passes)."""
    if not rec["ok"]:
        return ["does not compile: " + rec["error"][:300]]
    out = []
    if rec["smem"] > limit:
        out.append(f"shared memory {rec['smem']} B > limit {limit} B (cannot launch)")
    if rec["model_smem"] is not None and rec["smem"] > rec["model_smem"]:
        out.append(f"shared memory {rec['smem']} B > the resource model's {rec['model_smem']} B")
    if rec["spill"] is None or rec["regs"] is None:
        out.append("no ptxas register report")
    elif rec["spill"] > SPILL_BOUND:
        out.append(f"spills {rec['spill']} B > {SPILL_BOUND} B")
    if rec["kernel"] in CHECK_OFFSETS and rec["i32_muls"]:
        out.append(f"{rec['i32_muls']} 32-bit tensor multiplies (offsets wrap at 2^31)")
    if rec["ordered_atomics"]:
        out.append(f"{rec['ordered_atomics']} acquire/release atomics (use sem='relaxed')")
    return out


def model_gaps(limit: int, arch: int) -> list[str]:
    """(dtype, d) pairs, d = 1..4096, for which the nearest launcher has no config that fits."""
    from lgvq.kernels import nearest

    configs = nearest._nearest_kernel.configs
    gaps = []
    for elem, precision in ((2, "ieee"), (4, "tf32"), (4, "tf32x3")):
        for d in MODEL_DIMS:
            width = nearest.padded_d(d)
            block_d, single_d = nearest.block_d_for(width, elem)
            kept = nearest.launchable_configs(configs, width, elem, precision, limit, arch)
            if not any(nearest.shared_memory_bytes(c, block_d, single_d, elem, precision) <= limit for c in kept):
                gaps.append(f"{8 * elem}-bit {precision} d={d}")
    return gaps


# --------------------------------------------------------------------------- cache, table, main

#: Bump when a record's fields change: older cached records are then ignored.
CACHE_VERSION = 1


def cache_key(launch: Launch) -> str:
    """The launch plus triton's own hash of the kernel's code (its source, the jit functions
    it calls and the globals it reads), so unrelated edits keep their cached records."""
    return _kernel_function(launch.kernel).cache_key + " " + launch.key()


def run(arch: int, subset: str, jobs: int, cache_dir: pathlib.Path, families=FAMILIES) -> tuple[list[dict], int]:
    """The records of every planned launch, and how many had to be compiled now."""
    launches = plan(arch, subset, families)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / f"sm{arch}-triton{triton.__version__}-v{CACHE_VERSION}.jsonl"
    cached = {}
    if cache_file.exists():
        for line in cache_file.read_text().splitlines():
            rec = json.loads(line)
            cached[rec["key"]] = rec
    keys = [cache_key(launch) for launch in launches]
    todo = [(key, launch) for key, launch in zip(keys, launches) if key not in cached]
    print(f"compile_check sm_{arch}: {len(launches)} variants, {len(launches) - len(todo)} cached, "
          f"compiling {len(todo)} with {jobs} processes", flush=True)
    if todo:
        ctx = multiprocessing.get_context("spawn")  # a fresh triton in each worker
        with ctx.Pool(jobs) as pool, cache_file.open("a") as out:
            jobs_in = [(arch, launch) for _, launch in todo]
            for (key, launch), rec in zip(todo, pool.imap(compile_launch, jobs_in)):
                rec["key"] = key
                cached[key] = rec
                out.write(json.dumps(rec) + "\n")
                out.flush()
    # The label (dtype, d, shape) is the launch's own: one compile may serve several.
    return [dict(cached[key], **launch.label) for key, launch in zip(keys, launches)], len(todo)


def table(records: list[dict], arch: int, limit: int, gaps: list[str], wall_s: float, compiled: int,
          subset: str, families=FAMILIES) -> str:
    failing = [r for r in records if problems(r, limit)]
    which = "" if set(families) == set(FAMILIES) else f", kernel families {', '.join(families)} only"
    lines = [
        f"# Compile gate, sm_{arch} (`python -m bench.compile_check --arch {arch}`)", "",
        f"triton {triton.__version__} with its bundled ptxas, no GPU; subset `{subset}`{which}; "
        f"{len(records)} variants, {len(failing)} failing; resource-model gaps for d = 1..4096: "
        f"{len(gaps)}; this run compiled {compiled} of them in {wall_s:.0f} s (the rest came from its cache).", "",
        f"Limits: shared memory {limit} B per block; spills ≤ {SPILL_BOUND} B. `model` is "
        "`kernels.nearest.shared_memory_bytes` (must bound `smem`); `mma`: wgmma (Hopper tensor "
        "cores), mma.sync (Ampere-style), fma (no tensor cores). Each (kernel, dtype, d) row "
        "set lists every config the launcher can choose on this architecture.", "",
        "Loop mix (nearest kernel; `loop_mix`): PTX instructions per iteration of the code-tile "
        "loop (the outermost loop issuing MMAs): `loop` in all, of which `mma` tensor-core MMAs, "
        "`wait` waits (MMA completion, async-copy groups, barriers), `copy` asynchronous copies and "
        "`other` the rest (the argmin epilogue and addressing, on the CUDA cores); `copy<mma`: a "
        "copy (asynchronous, or a 16-byte load into registers) is issued before the iteration's "
        "first MMA, so it is in flight during this tile's MMA and epilogue; `in flight`: copy "
        "groups the loop's asynchronous-copy wait leaves outstanding (Triton's pipeliner: stages "
        "- 2). `BIASED=1` is the short epilogue, `SCHEDULE=1` the register prefetch of the next "
        "code tile.", "",
        "| kernel | dtype | d | shape | config | warps | stages | regs | spill B | smem B | model B | mma "
        "| loop | mma | wait | copy | other | copy<mma | in flight | compile s | problems |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    order = sorted(records, key=lambda r: (r["kernel"], r["mode"], r["d"], r["shape"], r["config"], r["num_warps"], r["num_stages"]))
    for r in order:
        why = "; ".join(problems(r, limit))
        lines.append(
            f"| {r['kernel']} | {r['mode']} | {r['d']} | {r['shape']} | {r['config']} | {r['num_warps']} | {r['num_stages']} | "
            f"{r.get('regs', '')} | {r.get('spill', '')} | {r.get('smem', '')} | {r['model_smem'] or ''} | "
            f"{r.get('mma', '')} | {r.get('loop_instrs', '')} | {r.get('loop_mma', '')} | {r.get('loop_waits', '')} | "
            f"{r.get('loop_copies', '')} | {r.get('loop_other', '')} | {_yes_no(r.get('copy_first'))} | "
            f"{_blank_if_none(r.get('in_flight'))} | {r['compile_s']} | {why} |"
        )
    return "\n".join(lines) + "\n"


#: Where a table's hand-written notes begin; a rerun keeps everything from there on.
NOTES_HEADING = "## Notes"


def kept_notes(path: pathlib.Path) -> str:
    """The notes section of the table already at ``path`` (empty if none), to append again."""
    text = path.read_text() if path.exists() else ""
    at = text.find("\n" + NOTES_HEADING)
    return "" if at < 0 else text[at:]


def _yes_no(flag) -> str:
    return "" if flag is None else "yes" if flag else "no"


def _blank_if_none(value) -> str:
    return "" if value is None else str(value)


def main(argv=None) -> int:
    if lgvq_kernels.INTERPRET:
        raise SystemExit("compile_check compiles GPU code: run it without TRITON_INTERPRET=1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
    parser.add_argument("--subset", choices=("full", "ci"), default="full")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=FAMILIES,
                        help="kernel families to compile (default all; a partial run writes no table unless --table)")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--cache", type=pathlib.Path,
                        default=pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
                        / "lgvq" / "compile_check")
    parser.add_argument("--table", type=pathlib.Path, help="markdown table path "
                        "(default: bench/results/compile-sm<arch>.md for the full set, none for ci)")
    args = parser.parse_args(argv)
    from lgvq.kernels.nearest import SHARED_MEMORY_LIMIT

    start = time.time()
    limit = SHARED_MEMORY_LIMIT[args.arch]
    records, compiled = run(args.arch, args.subset, args.jobs, args.cache, args.families)
    gaps = model_gaps(limit, args.arch)
    wall = time.time() - start
    whole = args.subset == "full" and set(args.families) == set(FAMILIES)
    path = args.table or (ROOT / "bench" / "results" / f"compile-sm{args.arch}.md" if whole else None)
    if path:
        path.write_text(table(records, args.arch, limit, gaps, wall, compiled, args.subset, args.families)
                        + kept_notes(path))
    failing = [(r, problems(r, limit)) for r in records if problems(r, limit)]
    for rec, why in failing:
        print(f"FAIL {rec['kernel']} {rec['mode']} d={rec['d']} {rec['config']} "
              f"w{rec['num_warps']} s{rec['num_stages']}: {'; '.join(why)}")
    for gap in gaps:
        print(f"FAIL no launchable nearest config for {gap}")
    print(f"compile_check sm_{args.arch}: {len(records)} variants ({compiled} compiled now), "
          f"{len(failing)} failing, {len(gaps)} model gaps, {wall:.0f} s")
    return 1 if failing or gaps else 0


if __name__ == "__main__":
    sys.exit(main())
