"""The compile gate (bench/compile_check.py): its checks on synthetic records, and the
gate itself on its CI subset for sm_90 (every launch path; a few minutes cold on 2 cores,
seconds once its per-variant cache holds the current kernel sources)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from bench import compile_check as gate  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIMIT = 232448


def record(**changes):
    rec = dict(ok=True, kernel="_nearest_kernel", smem=100_000, model_smem=120_000, regs=200, spill=0,
               i32_muls=0, ordered_atomics=0)
    rec.update(changes)
    return rec


@pytest.mark.parametrize("changes,why", [
    (dict(smem=240_000, model_smem=250_000), "cannot launch"),
    (dict(smem=130_000), "resource model"),
    (dict(spill=gate.SPILL_BOUND + 4), "spills"),
    (dict(i32_muls=2), "32-bit"),
    (dict(kernel="_counts_sums_kernel", model_smem=None, i32_muls=1), "32-bit"),
    (dict(ordered_atomics=1), "relaxed"),
    (dict(ok=False, error="CompilationError: boom"), "does not compile"),
    (dict(regs=None), "no ptxas"),
])
def test_gate_flags_each_problem(changes, why):
    assert why in " ".join(gate.problems(record(**changes), LIMIT))


def test_gate_passes_a_clean_record_and_unchecked_offsets():
    assert gate.problems(record(), LIMIT) == []
    # the relation kernels' 32-bit products are bounded by the words per caption
    assert gate.problems(record(kernel="_grad_kernel", model_smem=None, i32_muls=3), LIMIT) == []


def test_detectors_read_ttir_and_ptx():
    ttir = "%12 = arith.muli %10, %11 : tensor<16x64xi32> loc(#loc3)\n%13 = arith.muli %a, %b : tensor<16xi64>\n"
    assert gate.i32_tensor_multiplies(ttir) == 1
    assert gate.i32_tensor_multiplies("%1 = arith.muli %0, %c16_i32 : i32\n") == 0  # scalars are fine
    ptx = "atom.global.gpu.acq_rel.add.f32 %f1, [%rd1], %f2;\nred.global.gpu.relaxed.add.f32 [%rd2], %f3;\n"
    assert gate.ordered_atomics(ptx) == 1
    assert gate.mma_kind("wgmma.mma_async.sync.aligned.m64n64k16") == "wgmma"
    assert gate.mma_kind("mma.sync.aligned.m16n8k16.row.col") == "mma.sync"
    assert gate.mma_kind("fma.rn.f32") == "fma"


@pytest.mark.triton
def test_compile_gate_sm90_ci_subset(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    table = tmp_path / "compile-sm90-ci.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.compile_check", "--arch", "90", "--subset", "ci", "--jobs", "2",
         "--table", str(table)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    text = table.read_text()
    for kernel in ("_nearest_kernel", "_quantize_backward_kernel", "_counts_sums_kernel",
                   "_segment_sum_sorted_kernel", "_gather_sqerr_kernel", "_match_kernel", "_gram_kernel",
                   "_grad_kernel"):
        assert f"| {kernel} |" in text, kernel
    assert "SINGLE_D=True" in text and "SINGLE_D=False" in text  # both loop shapes
    assert "| wgmma |" in text
    # the nearest rows carry their loop mix, for both epilogues
    for biased in (0, 1):
        assert re.search(rf"\| _nearest_kernel \|.* BIASED={biased} SCHEDULE=0 \|.*\| wgmma \| \d+ \| \d+ \| \d+ \| \d+ \| \d+ \| (yes|no) \| \d* \|", text)
    # the deeper pipelines of the headline bf16 d = 256: the register prefetch issues the next
    # tile's copy before the MMA; the 4-stage 128×64 tile waits with two copy groups in flight
    loop = r"\| wgmma \| \d+ \| \d+ \| \d+ \| \d+ \| \d+ \| {} \| {} \|"
    assert re.search(r"\| _nearest_kernel \| bf16 \| 256 \|.* SCHEDULE=1 \|.*" + loop.format("yes", ""), text)
    assert re.search(r"\| _nearest_kernel \| bf16 \| 256 \|.*BLOCK_K=64 .* \| 8 \| 4 \|.*" + loop.format("no", "2"), text)


SYNTHETIC_PTX = """
.visible .entry k(
)
{
	mov.u32 	%r1, 0;
$L__BB0_1:
	mbarrier.try_wait.parity.shared::cta.b64 	%p1, [%r2], %r3;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, 1, 1, 1, 0, 0;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, 1, 1, 1, 0, 0;
	wgmma.wait_group.sync.aligned 0;
	cp.async.cg.shared.global [%r4], [%rd3], 16, %r5;
	min.f32 	%f2, %f1, %f3;
	setp.lt.f32 	%p2, %f2, %f4;
	// a comment; not an instruction
	@%p3 bra 	$L__BB0_1;
$L__BB0_2:
	add.s32 	%r1, %r1, 1;
	@%p4 bra 	$L__BB0_2;
	ret;
}
"""


def test_a_rerun_keeps_the_tables_notes(tmp_path):
    path = tmp_path / "compile-sm90.md"
    assert gate.kept_notes(path) == ""
    path.write_text("# Compile gate\n\n| a |\n|---|\n| 1 |\n\n## Notes\n\nbefore/after\n")
    assert gate.kept_notes(path) == "\n## Notes\n\nbefore/after\n"
    path.write_text("# Compile gate\n\n| a |\n")
    assert gate.kept_notes(path) == ""


def test_loop_mix_counts_the_mma_loop_only():
    mix = gate.loop_mix(SYNTHETIC_PTX)
    assert mix == {"loop_instrs": 8, "loop_mma": 2, "loop_waits": 2, "loop_copies": 1, "loop_other": 3,
                   "copy_first": False, "in_flight": None}
    top = "$L__BB0_1:\n"
    copy_first = SYNTHETIC_PTX.replace(top, top + "\tcp.async.cg.shared.global [%r4], [%rd3], 16;\n")
    assert gate.loop_mix(copy_first)["copy_first"] is True
    # a prefetch into registers: a 16-byte global load before the MMA (an 8-byte |e|² load is not one)
    prefetch = SYNTHETIC_PTX.replace(top, top + "\t@%p5 ld.global.v4.b32 { %r6, %r7, %r8, %r9 }, [ %rd4 + 0 ];\n")
    assert gate.loop_mix(prefetch)["copy_first"] is True
    norms = SYNTHETIC_PTX.replace(top, top + "\t@%p5 ld.global.v2.b32 { %r6, %r7 }, [ %rd4 + 0 ];\n")
    assert gate.loop_mix(norms)["copy_first"] is False and gate.loop_mix(norms)["loop_copies"] == 1
    # a 4-stage pipeline waits with two copy groups still in flight
    deep = SYNTHETIC_PTX.replace(top, top + "\tcp.async.wait_group 2;\n")
    assert gate.loop_mix(deep)["in_flight"] == 2 and gate.loop_mix(deep)["loop_waits"] == 3
    assert gate.loop_mix(SYNTHETIC_PTX.replace("wgmma.mma_async", "fma.rn")) == {}
