"""Quick checks of the benchmark harness and a pytest-benchmark entry for the CPU search.

These run in the default suite because they are small (a few seconds on 2 cores); they
assert nothing about speed. Full benchmarks: ``python -m bench.nearest`` / ``bench.quantize``.
"""

import shlex
import sys

import pytest
import torch

import bench.common
from bench.common import Row, format_table, measure, peak_extra_memory, write_results
from lgvq.ops.nearest import nearest_code
from lgvq.ops.quantize import vector_quantize

CPU = torch.device("cpu")

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # the plugin is in the "bench" extra, not the "test" one

    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark not installed")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory on CPU reads /proc")
def test_cpu_peak_memory_sees_a_fresh_allocation():
    mib = peak_extra_memory(lambda: torch.ones(16 * 2**20), CPU) / 2**20  # 64 MiB
    assert 60 <= mib <= 200


def test_measure_and_table_ratios():
    rows = [measure("eager", lambda: torch.ones(1000).sum(), CPU, flops=1e3, warmup=1, repeats=3),
            Row("slow twin", None, None, note="out of memory")]
    table = format_table("t", rows, also=("eager",))
    assert "| eager |" in table and "1.00×" in table and "out of memory" in table


def test_results_header_records_a_command_that_pastes_back(tmp_path, monkeypatch):
    # an argument with a space (``--conditions idle "busy process"``) must survive the round trip
    argv = ["bench.training", "--conditions", "idle", "busy process", "--cases", "LG, new captions"]
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["ignored"] + argv[1:])
    path = write_results("training", CPU, ["| t |"])
    command = next(line for line in path.read_text().splitlines() if line.startswith("Command: "))
    assert shlex.split(command.removeprefix("Command: `python -m ").removesuffix("`")) == argv


def test_nearest_bench_runs_small_shape():
    from bench.nearest import run_shape

    table = run_shape(256, 512, 16, torch.float32, CPU, repeats=3, budget_s=1.0, compile_timeout=1.0,
                      providers={"eager", "torch", "triton", "faiss", "matmul"})
    assert "lgvq torch" in table and "WRONG" not in table


def test_quantize_bench_runs_small_shape():
    from bench.quantize import run_shape

    table = run_shape(256, 512, 16, torch.float32, CPU, repeats=3, budget_s=1.0, compile_timeout=1.0,
                      providers={"eager", "torch", "vqp"}, check_grads=True)
    assert "lgvq torch" in table and "WRONG" not in table


def test_residual_bench_runs_small_shape(monkeypatch):
    import bench.residual as residual_bench

    monkeypatch.setitem(residual_bench.SHAPES, "tiny", (256, 3, 64, 16, "l2"))
    table = residual_bench.run_shape("tiny", CPU, repeats=3, budget_s=1.0, compile_timeout=1.0,
                                     providers={"eager", "torch", "vqp"})
    assert "lgvq torch" in table and "vector-quantize-pytorch" in table and "indices as eager's" not in table


def test_residual_bench_skips_dense_providers_that_cannot_fit(monkeypatch):
    """Too little memory for the dense stages: eager, vqp and torch.compile become rows that say
    so, and the compile (whose warm-up would run the dense graph) is not even attempted."""
    import bench.common as common
    import bench.residual as residual_bench

    monkeypatch.setitem(residual_bench.SHAPES, "tiny", (256, 3, 64, 16, "l2"))
    monkeypatch.setattr(common, "available_memory", lambda device: 2**16)
    monkeypatch.setattr(residual_bench, "compiled_or_note", lambda *a: pytest.fail("compiled a graph that cannot fit"))
    table = residual_bench.run_shape("tiny", CPU, repeats=3, budget_s=1.0, compile_timeout=1.0,
                                     providers={"eager", "compile", "torch", "vqp"})
    assert table.count("skipped: needs") == 3 and "lgvq torch | " in table


def test_benchmark_nearest_code_torch_cpu(benchmark):
    x, codebook = torch.randn(2048, 64), torch.randn(512, 64)
    idx, _ = benchmark.pedantic(nearest_code, args=(x, codebook), kwargs={"backend": "torch"}, rounds=5,
                                warmup_rounds=1)
    assert idx.shape == (2048,)


def test_benchmark_vector_quantize_torch_cpu_fwd_bwd(benchmark):
    z = torch.randn(2048, 64, requires_grad=True)
    codebook = torch.randn(512, 64, requires_grad=True)

    def step():
        z_q, _, loss = vector_quantize(z, codebook, 0.25, backend="torch")
        (z_q.sum() + loss).backward()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert z.grad is not None and codebook.grad is not None



def test_contention_bench_runs_every_op_under_each_condition():
    from bench.contention import main, table

    rows = main(["--quick", "--conditions", "idle", "busy process", "--no-save"])
    assert [(r["condition"], r["op"].split()[0]) for r in rows] == [
        (c, op) for c in ("idle", "busy process") for op in ("nearest_code", "vector_quantize", "relation_alignment_loss")
    ]
    text = table(rows, 2)
    assert "| nearest_code | busy process |" in text and "lgvq vs its 1 thread" in text


def test_scale_training_part_follows_k_log2_and_providers(monkeypatch):
    import bench.scale

    asked = []
    monkeypatch.setattr(bench.scale, "training_cell",
                        lambda k, d, batch, device, providers, *rest: asked.append((k, providers)) or [])
    bench.scale.main(["--quick", "--device", "cpu", "--parts", "train", "--k-log2", "6,7", "--providers", "lgvq"])
    assert asked == [(64, {"lgvq"}), (128, {"lgvq"})]
