"""Training throughput on the CPU: plain VQ vs LG-VQ steps, on an idle and on a busy machine.

    python -m bench.training                 # 10 timed steps per case
    python -m bench.training --steps 3       # a quick look

One process times ``train_step`` of ``configs/shapes-vqvae.yaml`` (plain) and
``configs/shapes-vqvae-lg.yaml`` (LG: the same model and data plus LanguageGuidance), on
1 and on every torch thread, under the conditions of ``bench.contention`` (idle; one extra
busy process), so the ratios compare like with like. Each case first runs 3 untimed steps.
The timed steps meet mostly new captions, as in a run's first epoch (the caption cache
serves the unmasked captions after that).

The LG overhead breakdown (1 thread, idle) times parts of the LG step by wrapping these
methods in ``torch.profiler.record_function``: the text encoder on the unmasked captions,
the leak-free re-encoding of the masked captions, the masked-text-prediction decoder and
vocabulary head (forward), and Lras (forward); "rest" is the LG step minus the plain step
minus those: the visual tokenizer, Lgsa and the backward and optimizer work of guidance.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.common import set_cpu_threads, write_results
from bench.contention import COMPETITORS, condition
from lgvq.data import load_dataset
from lgvq.experiment.batches import batches_from
from lgvq.experiment.config import load_config, shipped_configs
from lgvq.experiment.run import build_run, seed_everything
from lgvq.experiment.splits import dataset_args
from lgvq.experiment.train import make_optimizers, train_step
from lgvq.guidance import LanguageGuidance
from lgvq.guidance.semantic import MaskedTextPredictor
from lgvq.text import TextEncoder
from lgvq.threads import torch_threads

CONFIGS = {"plain": "shapes-vqvae.yaml", "LG": "shapes-vqvae-lg.yaml"}
#: Parts of the LG step, by the method that computes them.
PARTS = {
    "text encoder, unmasked captions": (TextEncoder, "encode"),
    "text encoder, masked re-encoding": (TextEncoder, "encode_masked"),
    "masked text prediction (decoder + vocabulary head)": (MaskedTextPredictor, "masked_loss"),
    "Lras": (LanguageGuidance, "_relation_loss"),
}
WARMUP_STEPS = 3


class Trainer:
    """A fresh run of one config, stepping through its own data stream."""

    def __init__(self, name: str):
        config = load_config(shipped_configs() / CONFIGS[name], ["train.out_dir=/tmp/lgvq-bench-training"])
        seed_everything(0)
        self.run = build_run(config)
        self.optimizers = make_optimizers(self.run)
        dataset = load_dataset(**dataset_args(config, config.data.split, config.data.size))
        self.batches = batches_from(dataset, config, 0)
        self.step_count = 0

    def step(self) -> None:
        images, captions = next(self.batches)
        train_step(self.run, self.optimizers, images, captions, self.step_count)
        self.step_count += 1

    def seconds_per_step(self, steps: int) -> float:
        for _ in range(WARMUP_STEPS):
            self.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - t0) / steps


def throughput(conditions: list[str], thread_counts: list[int], steps: int) -> list[dict]:
    rows = []
    for name in conditions:
        with condition(name) as info:
            timed = []
            for threads in thread_counts:
                with torch_threads(threads):
                    for config in CONFIGS:
                        seconds = Trainer(config).seconds_per_step(steps)
                        timed.append({"condition": name, "threads": threads, "config": config, "seconds": seconds})
                        print(timed[-1], flush=True)
        rows += [{**r, "load": info["load"]} for r in timed]
    return rows


@contextmanager
def parts_recorded():
    """Wrap every PARTS method in a record_function named after its part."""
    originals = {}
    for label, (cls, method) in PARTS.items():
        original = getattr(cls, method)
        originals[label] = (cls, method, original)

        def wrapped(self, *args, _original=original, _label=label, **kwargs):
            with record_function(_label):
                return _original(self, *args, **kwargs)

        setattr(cls, method, wrapped)
    try:
        yield
    finally:
        for cls, method, original in originals.values():
            setattr(cls, method, original)


def lg_breakdown(steps: int) -> dict[str, float]:
    """Seconds per step of each part of the LG overhead (1 thread, no competitor)."""
    with torch_threads(1):
        plain = Trainer("plain").seconds_per_step(steps)
        lg = Trainer("LG")
        for _ in range(WARMUP_STEPS):
            lg.step()
        with parts_recorded(), profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                lg.step()
            lg_seconds = (time.perf_counter() - t0) / steps
    totals = {e.key: e.cpu_time_total / 1e6 / steps for e in prof.key_averages() if e.key in PARTS}
    parts = {label: totals.get(label, 0.0) for label in PARTS}
    # encode() runs inside guidance's forward only; encode_masked is not nested in it
    parts["rest (visual tokens, Lgsa, guidance backward + optimizer)"] = lg_seconds - plain - sum(parts.values())
    return {"plain step": plain, "LG step": lg_seconds, **parts}


def throughput_table(rows: list[dict]) -> str:
    lines = ["| condition | other processes' load (cores) | threads | plain steps/s | LG steps/s | LG step / plain step |",
             "|---|---:|---:|---:|---:|---:|"]
    keyed = {(r["condition"], r["threads"], r["config"]): r for r in rows}
    for (name, threads, config), r in keyed.items():
        if config != "plain":
            continue
        lg = keyed[(name, threads, "LG")]
        lines.append(f"| {name} | {r['load']:.2f} | {threads} | {1 / r['seconds']:.2f} | {1 / lg['seconds']:.2f} | "
                     f"{lg['seconds'] / r['seconds']:.2f}× |")
    return "\n".join(lines)


def breakdown_table(parts: dict[str, float]) -> str:
    plain = parts["plain step"]
    lines = ["| part of the step (1 thread, idle) | ms per step | × plain step |", "|---|---:|---:|"]
    lines += [f"| {label} | {1e3 * s:.0f} | {s / plain:.2f} |" for label, s in parts.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--conditions", nargs="+", choices=list(COMPETITORS), default=["idle", "busy process"])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts to time (default: 1 and every core)")
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to bench/results")
    args = parser.parse_args(argv)
    threads = set_cpu_threads()
    counts = sorted(set(args.threads or {1, threads}))
    rows = throughput(args.conditions, counts, args.steps)
    parts = lg_breakdown(args.steps)
    tables = [throughput_table(rows), breakdown_table(parts)]
    note = f"{args.steps} timed steps per case after {WARMUP_STEPS} untimed ones; batch 16, 32×32 images."
    if args.no_save:
        print("\n\n".join(tables))
    else:
        write_results("training", torch.device("cpu"), tables, [note])


if __name__ == "__main__":
    main()
