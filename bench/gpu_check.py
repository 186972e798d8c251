"""One-command GPU check for an H100/H200 that fits one device call: correctness first, then
the benchmarks, everything brought back in two files.

    python -m bench.gpu_check OUT_DIR [--budget 330]     # from the repository root, on the GPU
    python -m bench.gpu_check OUT_DIR --dry              # CPU + TRITON_INTERPRET=1: checks this script

OUT_DIR (made absolute) receives ``00-summary.txt`` and ``gpu_check.tar.gz`` (every step's log,
the junit xml, ``sweep.jsonl``, ``env.json``, the benchmark tables), both rewritten after every
step so that a run cut off keeps what it did; the check prints how many files it left there.
The summary lists each step's exit status, seconds, and TIMED OUT or SKIPPED, with the last
lines of its log. The steps run in order of value under one wall-clock budget (default 330 s:
with the machine's start-up, one call leaves time for a rerun); a step that no longer fits is
skipped, and a failing or timed-out step is recorded, never fatal. A timed-out step is first
interrupted (SIGINT, so pytest still writes its junit xml), then killed.

1. ``env``: GPU, driver, versions, the device's shared-memory limit.
2. ``overflow``: N·d ≥ 2^31 (own process: an illegal address would end only it).
3. ``pytest_gpu``: every gpu-marked test, 4 workers (junit xml ``pytest_gpu.xml``).
4. ``sweep``: triton vs torch at the headline shapes (``sweep.jsonl``, one JSON object per
   measurement): nearest at the headline N = 65,536, K = 16,384, d = 256 in bf16, then at
   K = 2^18, d = 256/64/1024 in bf16, fp32 "highest" (3xTF32) and
   fp32 "high" (TF32) — index agreement, the chosen code's exact fp64 excess against
   ``argmin_tolerance``, run-to-run equality, the config the autotuner picked, its time against
   the bare matmul and first-call seconds; vector_quantize forward + backward against torch
   (values, gradients), a collapsed codebook's backward with atomics and deterministic; host
   syncs per call (``torch.cuda.set_sync_debug_mode``); and the driver's registers / spills /
   shared memory of every kernel variant the sweep compiled.
5. The benchmarks at their headline shapes (each writes its ``bench/results/*-cuda.md``, packed
   into the archive): N = 65,536, K = 16,384, d = 256 bf16 search (lgvq triton vs bare
   torch.matmul vs eager) and quantize forward + backward; the K = 2^18 training step (eager
   runs out of memory there); the relation loss; fp32 search.

``--dry`` runs the same steps on the CPU under the interpreter with tiny shapes (benchmarks
with ``--quick``, which writes no results file; the relation benchmark, whose shapes are
fixed, is skipped).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUMMARY = "00-summary.txt"
ARCHIVE = "gpu_check.tar.gz"
HEADLINE = dict(n=65536, k=16384, d=256)
#: The device call brings back at most this many files from OUT_DIR.
MAX_FILES = 8
#: Seconds a step interrupted at its limit gets to write its results before it is killed.
GRACE_S = 10
#: A dry run's step limits and default budget are this many times the GPU's: the interpreter
#: and a shared CPU are slow, and the dry run checks the script, not the times.
DRY_SLOWDOWN = 4
DEFAULT_BUDGET_S = 330.0


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
    """Runs steps in a work folder and, after each one, rewrites OUT's summary and archive."""

    #: A step gets at least this long or is skipped (a 5 s slice of budget runs nothing useful).
    min_step_s = 15

    def __init__(self, out: pathlib.Path, work: pathlib.Path, budget: float, env: dict, cwd: pathlib.Path = ROOT):
        self.out, self.work, self.budget, self.env, self.cwd = out, work, budget, env, cwd
        self.start = time.time()
        self.lines = [f"lgvq GPU check, budget {budget:.0f} s, started {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
        self._write()

    def _write(self):
        (self.out / SUMMARY).write_text("\n".join(self.lines) + "\n")
        partial = self.out / (ARCHIVE + ".part")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(self.work, arcname="gpu_check")
        os.replace(partial, self.out / ARCHIVE)

    def left(self) -> float:
        return self.budget - (time.time() - self.start)

    def skip(self, name: str, why: str) -> None:
        self.lines.append(f"{name}: SKIPPED ({why})")
        self._write()

    def run(self, name: str, max_s: float, argv: list[str]) -> None:
        limit = min(max_s, self.left() - 5)
        if limit < self.min_step_s:
            self.skip(name, f"budget: {self.left():.0f} s left")
            return
        log = self.work / f"{name}.log"
        t0 = time.time()
        with log.open("w") as f:
            f.write(f"== {name} (limit {limit:.0f} s): {' '.join(argv)}\n")
            f.flush()
            rc, note = run_with_limit(argv, self.cwd, self.env, f, limit)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        self.lines.append(f"{name}: rc={rc} ({time.time() - t0:.0f} s of {limit:.0f} s){note}")
        self.lines += ["    " + line[:300] for line in tail]
        self._write()

    def finish(self) -> None:
        self.lines.append(f"total: {time.time() - self.start:.0f} s of {self.budget:.0f} s budget")
        self._write()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_with_limit(argv, cwd, env, log, limit: float) -> tuple[int | None, str]:
    """(exit status or None, note). At the limit the step's process group gets SIGINT (pytest
    then ends its session and writes its junit xml) and, ``GRACE_S`` later, SIGKILL."""
    try:
        # SIGINT back to its default in the child: a parent started in the background by a shell, or an
        # xdist worker, ignores it, the child would inherit that, and the interrupt at the limit be lost
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_default_sigint)
    except OSError as err:
        return None, f" FAILED TO START ({err})"
    try:
        return proc.wait(timeout=limit), ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return None, " TIMED OUT"


def plan_steps(py: str, work: pathlib.Path, dry: bool) -> list[tuple[str, float, list[str] | None]]:
    """(name, seconds at most, argv) in order of value; argv None: not run in this mode. The
    limits add up to the default budget, so that every step can run in one call."""
    n, k, d = (str(HEADLINE[key]) for key in ("n", "k", "d"))
    if dry:
        device = ["--device", "cpu", "--quick"]
        bench = [*device, "--n", "64", "--k", "96", "--d", "24", "--repeats", "1", "--budget", "0.1"]
        scale_k, scale_timing = "6", ["--repeats", "1", "--budget", "0.1"]
    else:
        device = ["--device", "cuda"]
        bench = [*device, "--n", n, "--k", k, "--d", d, "--repeats", "5", "--budget", "2"]
        scale_k, scale_timing = "18", ["--budget", "2"]
    me = [py, "-m", "bench.gpu_check", str(work)] + (["--dry"] if dry else [])
    workers = ["-n", "4"] if importlib.util.find_spec("xdist") else []
    pytest = [py, "-m", "pytest", "-c", str(ROOT / "pytest.ini"), "--rootdir", str(ROOT), str(ROOT / "tests"),
              "-m", "gpu", *workers, "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={work / 'pytest_gpu.xml'}"]
    return [
        ("env", 15, me + ["--env-only"]),
        ("overflow", 30, me + ["--sweep-only", "--section", "overflow"]),
        ("pytest_gpu", 100, pytest),
        ("sweep", 75, me + ["--sweep-only"]),
        ("bench_nearest_bf16", 35, [py, "-m", "bench.nearest", *bench, "--dtype", "bf16",
                                    "--providers", "eager,triton,matmul"]),
        ("bench_quantize_bf16", 25, [py, "-m", "bench.quantize", *bench, "--dtype", "bf16",
                                     "--providers", "eager,triton"]),
        ("bench_scale_train", 20, [py, "-m", "bench.scale", *device, "--parts", "train", "--k-log2", scale_k,
                                   "--providers", "eager,lgvq", *scale_timing]),
        ("bench_relation", 15, None if dry else [py, "-m", "bench.relation", *device, "--quick", "--budget", "2"]),
        ("bench_nearest_fp32", 15, [py, "-m", "bench.nearest", *bench, "--dtype", "fp32",
                                    "--providers", "triton,matmul,torch"]),
    ]


def ensure_junit(path: pathlib.Path, name: str) -> None:
    """A junit file even when pytest was stopped before it could write one (while its workers
    were still starting): one error that says so."""
    if not path.exists():
        path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<testsuites><testsuite name="{name}" errors="1" '
                        'tests="1"><testcase classname="gpu_check" name="session"><error message="stopped at its '
                        'time limit before pytest wrote any result"/></testcase></testsuite></testsuites>\n')


def run_check(out: pathlib.Path, budget: float, dry: bool) -> int:
    """Run every step; returns how many files OUT holds at the end."""
    root = import_root()
    env = dict(os.environ)
    if dry:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    # Prepended: what the caller put on the path (a site customisation, say) stays there.
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    work = pathlib.Path(tempfile.mkdtemp(prefix="lgvq_gpu_check_out_"))
    try:
        steps = Steps(out, work, budget, env, cwd=root)
        for name, max_s, argv in plan_steps(sys.executable, work, dry):
            if argv is None:
                steps.skip(name, "not in a dry run")
                continue
            steps.run(name, max_s * (DRY_SLOWDOWN if dry else 1), argv)
            if name == "pytest_gpu":
                ensure_junit(work / "pytest_gpu.xml", name)
            for table in (ROOT / "bench" / "results").glob("*-cuda.md"):
                shutil.copy(table, work / table.name)
        steps.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return len([p for p in out.iterdir() if p.is_file()])


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
        sweep_n, sweep_k = (40, 100) if self.dry else (8192, 2**18)
        # The dry run uses fp16 for bf16: triton 3.9's interpreter computes bf16 tl.dot wrongly.
        half = torch.float16 if self.dry else torch.bfloat16
        modes = {"bf16": (half, "highest"), "fp32-highest": (torch.float32, "highest"),
                 "fp32-high": (torch.float32, "high")}
        # First the headline search (its candidates' loops are in bench/results/compile-sm90.md:
        # which one wins, and how close to the bare matmul), then K = 2^18 (the headline d first).
        cases = [((64, 96, 24) if self.dry else (HEADLINE["n"], HEADLINE["k"], HEADLINE["d"])) + ("bf16",)]
        cases += [(sweep_n, sweep_k, d, mode) for d in ((20,) if self.dry else (256, 64, 1024)) for mode in modes]
        for n, k, d, mode in cases:
            dtype, precision = modes[mode]
            def body(rec, n=n, k=k, d=d, dtype=dtype, precision=precision):
                torch.set_float32_matmul_precision(precision)
                x, e = self.randn(n, d, dtype=dtype, seed=1), self.randn(k, d, dtype=dtype, seed=2)
                self.sync()
                t0 = time.perf_counter()
                idx, dist = nearest_code(x, e, backend="triton")
                self.sync()
                rec["first_call_s"] = round(time.perf_counter() - t0, 2)
                # What the autotuner picked, and every candidate's time in its last search
                # (tile sizes, plain vs short epilogue, pipelined vs prefetch schedule): the sweep
                # runs one search at a time.
                tuner = knear._nearest_kernel
                rec["config"] = str(getattr(tuner, "best_config", None))
                rec["candidates_ms"] = {str(c): t for c, t in (getattr(tuner, "configs_timings", None) or {}).items()}
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


def env_report(out: pathlib.Path, dry: bool) -> None:
    """Versions of the stack (and which optional packages the image has); on a GPU the device,
    its driver (nvidia-smi into the log) and its shared-memory limit."""
    import importlib.metadata

    import torch

    from lgvq.kernels import nearest
    from lgvq.text.local_files import MINILM_PACKAGE

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    info = dict(python=sys.version.split()[0], torch=torch.__version__, cuda=torch.version.cuda,
                **{name: version(name) for name in ("triton", "numpy", "transformers", "pytest-xdist",
                                                    "vector-quantize-pytorch")},
                minilm_importable=importlib.util.find_spec(MINILM_PACKAGE) is not None)
    if not dry:
        subprocess.run(["nvidia-smi"], check=False)
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, sm=f"{props.major}{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
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
    p.add_argument("--budget", type=float, default=None,
                   help=f"wall-clock seconds for all steps (default {DEFAULT_BUDGET_S:.0f}; {DRY_SLOWDOWN}× that dry)")
    p.add_argument("--env-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sweep-only", action="store_true", help="run the sweep in this process")
    p.add_argument("--section", default="nearest,quantize,syncs,resources",
                   help="sweep sections: nearest, quantize, syncs, resources, overflow")
    p.add_argument("--dry", action="store_true", help="CPU interpreter, tiny shapes (checks this script)")
    args = p.parse_args(argv)
    out = args.out.resolve()  # the steps run in another folder
    out.mkdir(parents=True, exist_ok=True)
    if args.env_only:
        env_report(out, args.dry)
    elif args.sweep_only:
        run_sweep(out, args.section.split(","), args.dry)
    else:
        budget = args.budget or DEFAULT_BUDGET_S * (DRY_SLOWDOWN if args.dry else 1)
        files = run_check(out, budget, args.dry)
        print(f"gpu_check: {files} files in {out} (the device call brings back at most {MAX_FILES})")
        return 0 if files <= MAX_FILES else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
