"""One-command GPU check for an H100/H200: tests, a triton-vs-torch sweep, the benchmarks.

    python -m bench.gpu_check OUT_DIR [--budget 470]        # from the repository root, on the GPU
    python -m bench.gpu_check OUT_DIR --sweep-only --dry    # CPU + TRITON_INTERPRET=1: checks this script

Everything goes into OUT_DIR; ``00-summary.txt`` (rewritten after every step, so it is
current even if the run is cut off) lists each step's exit status, seconds, and TIMED OUT or
SKIPPED, with the last lines of its log. The steps run in order of value under one wall-clock
budget (default 470 s, inside 8 minutes with start-up); a step that no longer fits is skipped
and a failing or timed-out step is recorded, never fatal:

1. ``env``: GPU, driver, versions, the device's shared-memory limit.
2. ``pytest_gpu``: every gpu-marked test (junit xml beside the log).
3. ``sweep``: triton vs torch at the headline shapes (``sweep.jsonl``, one JSON object per
   measurement): nearest at K = 2^18, d = 64/256/1024 in fp32 "highest" (3xTF32), fp32
   "high" (TF32) and bf16 — index agreement, the chosen code's exact fp64 excess against
   ``argmin_tolerance``, run-to-run equality, the autotuned config and first-call seconds;
   vector_quantize forward + backward against torch (values, gradients), a collapsed
   codebook's backward with atomics and deterministic; host syncs per call
   (``torch.cuda.set_sync_debug_mode``); and the driver's registers / spills / shared memory
   of every kernel variant the sweep compiled.
4. The benchmarks at their headline shapes (each writes its ``bench/results/*-cuda.md``,
   copied into OUT_DIR): N = 65,536, K = 16,384, d = 256 bf16 search (lgvq triton vs bare
   torch.matmul vs eager) and quantize forward + backward; the K = 2^18 training step
   (eager runs out of memory there); the relation loss; fp32 search.
5. ``overflow``: N·d ≥ 2^31 (own process: an illegal address would end only it).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUMMARY = "00-summary.txt"
HEADLINE = dict(n=65536, k=16384, d=256)


# --------------------------------------------------------------------------- the step runner

def import_root() -> pathlib.Path:
    """A folder from which this checkout's ``lgvq.kernels`` imports: the checkout itself when
    it does (editable install, or a development symlink), else a temporary tree of symlinks that
    maps ``kernels/`` to ``lgvq/kernels`` as setup.py does. Steps run from there, so that
    the checkout's own ``lgvq/`` (without kernels) does not shadow it."""
    probe = subprocess.run([sys.executable, "-c", "import lgvq.kernels; print(lgvq.kernels.__file__)"],
                           cwd=ROOT, capture_output=True, text=True)
    found = probe.stdout.strip()
    if probe.returncode == 0 and pathlib.Path(found).resolve().parent == (ROOT / "kernels").resolve():
        return ROOT
    tree = pathlib.Path(tempfile.mkdtemp(prefix="lgvq_gpu_check_"))
    (tree / "lgvq").mkdir()
    for entry in (ROOT / "lgvq").iterdir():
        if entry.name != "kernels":
            (tree / "lgvq" / entry.name).symlink_to(entry)
    (tree / "lgvq" / "kernels").symlink_to(ROOT / "kernels")
    for name in ("bench", "configs"):
        if (ROOT / name).exists():
            (tree / name).symlink_to(ROOT / name)
    return tree


class Steps:
    #: A step gets at least this long or is skipped (a 5 s slice of budget runs nothing useful).
    min_step_s = 15

    def __init__(self, out: pathlib.Path, budget: float, env: dict, cwd: pathlib.Path = ROOT):
        self.out, self.budget, self.env, self.cwd = out, budget, env, cwd
        self.start = time.time()
        self.lines = [f"lgvq GPU check, budget {budget:.0f} s, started {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
        self._write()

    def _write(self):
        (self.out / SUMMARY).write_text("\n".join(self.lines) + "\n")

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def run(self, name: str, max_s: float, argv: list[str]) -> None:
        limit = min(max_s, self.left() - 5)
        if limit < self.min_step_s:
            self.lines.append(f"{name}: SKIPPED (budget: {self.left():.0f} s left)")
            self._write()
            return
        log = self.out / f"{name}.log"
        t0 = time.time()
        with log.open("w") as f:
            f.write(f"== {name} (limit {limit:.0f} s): {' '.join(argv)}\n")
            f.flush()
            try:
                rc = subprocess.run(argv, cwd=self.cwd, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=limit).returncode
                note = ""
            except subprocess.TimeoutExpired:
                rc, note = None, " TIMED OUT"
            except OSError as err:
                rc, note = None, f" FAILED TO START ({err})"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        self.lines.append(f"{name}: rc={rc} ({time.time() - t0:.0f} s of {limit:.0f} s){note}")
        self.lines += ["    " + line[:300] for line in tail]
        self._write()

    def finish(self) -> None:
        self.lines.append(f"total: {time.time() - self.start:.0f} s of {self.budget:.0f} s budget")
        self._write()


def run_check(out: pathlib.Path, budget: float) -> None:
    root = import_root()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(root), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    py = sys.executable
    n, k, d = (str(HEADLINE[key]) for key in ("n", "k", "d"))
    bench = ["--device", "cuda", "--n", n, "--k", k, "--d", d, "--repeats", "5", "--budget", "2"]
    steps = Steps(out, budget, env, cwd=root)
    steps.run("env", 30, [py, "-m", "bench.gpu_check", str(out), "--env-only"])
    steps.run("pytest_gpu", 150, [py, "-m", "pytest", "-c", str(ROOT / "pytest.ini"), "--rootdir", str(ROOT),
                                  str(ROOT / "tests"), "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
                                  f"--junitxml={out / 'pytest_gpu.xml'}"])
    steps.run("sweep", 150, [py, "-m", "bench.gpu_check", str(out), "--sweep-only"])
    steps.run("bench_nearest_bf16", 60, [py, "-m", "bench.nearest", *bench, "--dtype", "bf16",
                                         "--providers", "eager,triton,matmul"])
    steps.run("bench_quantize_bf16", 60, [py, "-m", "bench.quantize", *bench, "--dtype", "bf16",
                                          "--providers", "eager,triton"])
    steps.run("bench_scale_train_k2e18", 60, [py, "-m", "bench.scale", "--device", "cuda", "--parts", "train",
                                              "--k-log2", "18", "--providers", "eager,lgvq", "--budget", "2"])
    steps.run("bench_relation", 45, [py, "-m", "bench.relation", "--device", "cuda", "--quick", "--budget", "2"])
    steps.run("bench_nearest_fp32", 45, [py, "-m", "bench.nearest", *bench, "--dtype", "fp32",
                                         "--providers", "triton,matmul,torch"])
    steps.run("overflow", 50, [py, "-m", "bench.gpu_check", str(out), "--sweep-only", "--section", "overflow"])
    for table in (ROOT / "bench" / "results").glob("*-cuda.md"):
        shutil.copy(table, out / table.name)
    steps.finish()


# --------------------------------------------------------------------------- the sweep (its own process)

class Sweep:
    """Measurements appended to OUT/sweep.jsonl as they finish (a timeout keeps what was done)."""

    def __init__(self, out: pathlib.Path, dry: bool):
        import torch

        self.torch, self.out, self.dry = torch, out, dry
        self.dev = torch.device("cpu" if dry else "cuda")

    def emit(self, **rec):
        line = json.dumps(rec, default=str)
        print(line, flush=True)
        with (self.out / "sweep.jsonl").open("a") as f:
            f.write(line + "\n")

    def guarded(self, rec: dict, body) -> None:
        """Run ``body(rec)``; any error is recorded in the record, never raised."""
        try:
            body(rec)
        except Exception as err:  # noqa: BLE001 - every failure is a result of the check
            rec.update(error=f"{type(err).__name__}: {err}"[:2000], tb=traceback.format_exc()[-2000:])
        finally:
            self.torch.set_float32_matmul_precision("highest")
        self.emit(**rec)

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def ms(self, fn, reps=10):
        """Median milliseconds of ``fn`` (CUDA events; not run on the dry run)."""
        torch = self.torch
        if self.dry:  # the interpreter's times mean nothing
            return float("nan")
        fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    def randn(self, *shape, dtype=None, seed=0):
        g = self.torch.Generator().manual_seed(seed)
        return self.torch.randn(*shape, generator=g).to(self.dev, dtype or self.torch.float32)

    # -- nearest
    def nearest(self):
        from lgvq.kernels import nearest as knear
        from lgvq.ops import nearest_code

        torch = self.torch
        n, k = (40, 100) if self.dry else (8192, 2**18)
        # The dry run uses fp16 for bf16: triton 3.9's interpreter computes bf16 tl.dot wrongly.
        half = torch.float16 if self.dry else torch.bfloat16
        modes = {"fp32-highest": (torch.float32, "highest"), "fp32-high": (torch.float32, "high"),
                 "bf16": (half, "highest")}
        for d in ((20,) if self.dry else (64, 256, 1024)):
            for mode, (dtype, precision) in modes.items():
                def body(rec, d=d, dtype=dtype, precision=precision):
                    torch.set_float32_matmul_precision(precision)
                    x, e = self.randn(n, d, dtype=dtype, seed=1), self.randn(k, d, dtype=dtype, seed=2)
                    self.sync()
                    t0 = time.perf_counter()
                    idx, dist = nearest_code(x, e, backend="triton")
                    self.sync()
                    rec["first_call_s"] = round(time.perf_counter() - t0, 2)
                    rec["config"] = str(getattr(knear._nearest_kernel, "best_config", None))
                    ref_idx, _ = nearest_code(x, e, backend="torch")
                    rec["agree_vs_torch"] = (idx == ref_idx).float().mean().item()
                    again = nearest_code(x, e, backend="triton")
                    rec["deterministic"] = bool(torch.equal(again[0], idx) and torch.equal(again[1], dist))
                    rec.update(self.exactness(x, e, idx, knear, dtype))
                    rec["triton_ms"] = self.ms(lambda: nearest_code(x, e, backend="triton"))
                    rec["matmul_ms"] = self.ms(lambda: x @ e.t())
                    rec["triton_vs_matmul"] = rec["triton_ms"] / rec["matmul_ms"]
                self.guarded(dict(section="nearest", n=n, k=k, d=d, mode=mode), body)

    def exactness(self, x, e, idx, knear, dtype, rows=256):
        """The chosen codes' excess over the exact fp64 optimum on a row sample, against the
        documented tolerance (``kernels.nearest.argmin_tolerance``)."""
        torch = self.torch
        xs, cb = x[:rows].double(), e.double()
        dist = (xs.pow(2).sum(1, keepdim=True) + cb.pow(2).sum(1) - 2 * xs @ cb.t()).clamp_min(0)
        best = dist.min(1).values
        excess = dist.gather(1, idx[:rows].view(-1, 1)).squeeze(1) - best
        precision = knear.fp32_dot_precision() if dtype == torch.float32 else "ieee"
        tol = knear.argmin_tolerance(x[:rows], e, precision)
        return {"exact_frac": (excess <= 0).float().mean().item(), "max_excess": excess.max().item(),
                "within_tolerance": bool((excess <= tol).all()), "tolerance_max": tol.max().item()}

    # -- vector_quantize
    def quantize(self):
        from lgvq.ops import vector_quantize

        torch = self.torch
        n, k, d = (40, 70, 20) if self.dry else (HEADLINE["n"], HEADLINE["k"], HEADLINE["d"])
        half = torch.float16 if self.dry else torch.bfloat16
        for mode, dtype in (("bf16", half), ("fp32-highest", torch.float32)):
            def body(rec, dtype=dtype):
                z0, e0 = self.randn(n, d, dtype=dtype, seed=3), self.randn(k, d, dtype=dtype, seed=4)
                up = self.randn(n, d, dtype=dtype, seed=5)
                outs = {b: self.quantize_step(vector_quantize, z0, e0, up, b) for b in ("triton", "torch")}
                (zq, idx, loss, gz, ge), ref = outs["triton"], outs["torch"]
                agree = idx == ref[1]
                rec["idx_agree"] = agree.float().mean().item()
                rec["loss_rel_diff"] = ((loss - ref[2]).abs() / ref[2].abs()).item()
                rec["grad_z_max_diff_on_agree"] = (gz[agree].float() - ref[3][agree].float()).abs().max().item()
                rec["grad_e_max_diff"] = (ge.float() - ref[4].float()).abs().max().item()
                rec["step_ms_triton"] = self.ms(lambda: self.quantize_step(vector_quantize, z0, e0, up, "triton"), 5)
                rec["step_ms_torch"] = self.ms(lambda: self.quantize_step(vector_quantize, z0, e0, up, "torch"), 3)
            self.guarded(dict(section="quantize", n=n, k=k, d=d, mode=mode), body)
        self.guarded(dict(section="collapsed", n=n, k=k, d=d, mode="fp32"), self.collapsed)

    def quantize_step(self, vector_quantize, z0, e0, up, backend):
        z, e = z0.clone().requires_grad_(), e0.clone().requires_grad_()
        zq, idx, loss = vector_quantize(z, e, backend=backend)
        ((zq * up).sum() + 3.0 * loss).backward()
        return zq.detach(), idx, loss.detach(), z.grad, e.grad

    def collapsed(self, rec):
        """Every row on one code: the codebook gradient's worst case, both reduction paths."""
        from lgvq.kernels.quantize import quantize_backward

        torch = self.torch
        n, d = rec["n"], rec["d"]
        z, e = self.randn(n, d, seed=6), self.randn(rec["k"], d, seed=7)
        idx = torch.zeros(n, dtype=torch.int64, device=self.dev)
        g = torch.ones(1, device=self.dev)
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            try:
                first = quantize_backward(z, e, idx, z, g, 0.25, True)[1]
                second = quantize_backward(z, e, idx, z, g, 0.25, True)[1]
                key = "deterministic" if deterministic else "atomic"
                rec[f"{key}_ms"] = self.ms(lambda: quantize_backward(z, e, idx, z, g, 0.25, True))
                rec[f"{key}_bitwise_repeat"] = bool(torch.equal(first, second))
                want = (2.0 / (n * d)) * (e[0] - z).sum(0)
                rec[f"{key}_max_diff"] = (first[0] - want).abs().max().item()
            finally:
                torch.use_deterministic_algorithms(False)

    # -- host syncs
    def syncs(self):
        from lgvq.ops import nearest_code, vector_quantize

        torch = self.torch

        def count(fn):
            fn()
            self.sync()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            return sum("synchroniz" in str(w.message) for w in caught)

        def body(rec):
            x, e = self.randn(4096, 256, seed=8), self.randn(16384, 256, seed=9).requires_grad_()
            rec["nearest_code"] = count(lambda: nearest_code(x, e, backend="triton"))
            rec["vector_quantize_fwd_bwd"] = count(lambda: vector_quantize(x, e, backend="triton")[2].backward())

        if self.dry:
            return
        self.guarded(dict(section="syncs_per_call"), body)

    # -- what the driver says about every compiled variant
    def resources(self):
        from lgvq.kernels import nearest, quantize, relation

        for module in (nearest, quantize, relation):
            for name in dir(module):
                fn = getattr(module, name)
                while hasattr(fn, "fn") and not hasattr(fn, "device_caches"):
                    fn = fn.fn
                for caches in getattr(fn, "device_caches", {}).values():
                    for kernel in caches[0].values():
                        rec = dict(section="resources", kernel=name)

                        def body(rec, kernel=kernel):
                            kernel._init_handles()
                            md = kernel.metadata
                            rec.update(num_warps=md.num_warps, num_stages=md.num_stages, smem=md.shared,
                                       regs=kernel.n_regs, spills=kernel.n_spills)
                        self.guarded(rec, body)

    # -- N·d ≥ 2^31
    def overflow(self):
        from lgvq.ops import nearest_code, vector_quantize

        torch = self.torch
        d, k = (32, 40) if self.dry else (256, 1024)
        n = 100 if self.dry else 2**31 // d + 4096
        tail = 20 if self.dry else 4096

        def body(rec):
            half = torch.float16 if self.dry else torch.bfloat16
            x = self.randn(tail, d, dtype=half, seed=10).repeat(n // tail + 1, 1)[:n]
            e = self.randn(k, d, dtype=half, seed=11)
            idx, _ = nearest_code(x, e, backend="triton")
            ref, _ = nearest_code(x[-tail:], e, backend="torch")
            rec["nearest_tail_agree"] = (idx[-tail:] == ref).float().mean().item()
            zq, idx_q, _ = vector_quantize(x, e, backend="triton")
            rec["quantize_tail_exact"] = bool(torch.equal(zq[-tail:], e[idx_q[-tail:]]))

        self.guarded(dict(section="overflow", n=n, d=d, n_times_d=n * d), body)


def env_report(out: pathlib.Path) -> None:
    import torch
    import triton

    from lgvq.kernels import nearest

    subprocess.run(["nvidia-smi"], check=False)
    props = torch.cuda.get_device_properties(0)
    info = dict(device=props.name, sm=f"{props.major}{props.minor}", sms=props.multi_processor_count,
                memory_gib=round(props.total_memory / 2**30, 1), torch=torch.__version__, cuda=torch.version.cuda,
                triton=triton.__version__, python=sys.version.split()[0],
                shared_memory_limit=nearest.shared_memory_limit(torch.device("cuda", 0)),
                offline_table=nearest.SHARED_MEMORY_LIMIT.get(props.major * 10 + props.minor))
    print(json.dumps(info))
    (out / "env.json").write_text(json.dumps(info, indent=1) + "\n")


def run_sweep(out: pathlib.Path, sections: list[str], dry: bool) -> None:
    sweep = Sweep(out, dry)
    for name in sections:
        t0 = time.time()
        try:
            getattr(sweep, name)()
        except Exception as err:  # noqa: BLE001 - a broken section must not stop the others
            sweep.emit(section=name, error=f"{type(err).__name__}: {err}", tb=traceback.format_exc()[-2000:])
        sweep.emit(section=name, stage="done", seconds=round(time.time() - t0, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--budget", type=float, default=470.0, help="wall-clock seconds for all steps")
    p.add_argument("--env-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sweep-only", action="store_true", help="run the sweep in this process")
    p.add_argument("--section", default="nearest,quantize,syncs,resources",
                   help="sweep sections: nearest, quantize, syncs, resources, overflow")
    p.add_argument("--dry", action="store_true", help="CPU interpreter, tiny shapes (checks the sweep only)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.env_only:
        env_report(args.out)
    elif args.sweep_only:
        run_sweep(args.out, args.section.split(","), args.dry)
    else:
        run_check(args.out, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
