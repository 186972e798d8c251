"""Training throughput on the CPU: plain VQ vs LG-VQ steps, on an idle and on a busy machine.

    python -m bench.training                          # 16 timed steps per case
    python -m bench.training --conditions idle --threads 1 --no-save   # a quicker look

One process times the training loop's steps (``train_step`` and the batch stream, as
``lgvq.experiment.train`` runs them) of ``configs/shapes-vqvae.yaml`` (plain) and
``configs/shapes-vqvae-lg.yaml`` (LG: the same model and data plus LanguageGuidance), on
1 and on every torch thread, under the conditions of ``bench.contention`` (idle; one extra
busy process), so the ratios compare like with like. LG runs twice: "LG, new captions" as in
a run's first epoch (the captions of each ``LOOKAHEAD_BATCHES`` steps are encoded together
by ``encode_ahead``, and the timed steps hold one such window), and "LG, cached captions" as
in later epochs (the timed steps' captions are in the caption cache before timing). Each
case first runs one untimed window of steps.

The LG overhead breakdown (1 thread, idle, cached captions) times parts of the LG step by
wrapping these methods in ``torch.profiler.record_function``: the text encoder on the
unmasked captions (the model runs of the cache's misses), the leak-free re-encoding of the
masked captions, the masked-text-prediction decoder and vocabulary head (forward), and Lras
(forward); "rest" is the LG step minus the plain step minus those: the visual tokenizer,
Lgsa and the backward and optimizer work of guidance.
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
from lgvq.text import TextEncoder, encode_ahead
from lgvq.text.cache import LOOKAHEAD_BATCHES
from lgvq.threads import torch_threads

#: case -> (config, whether the timed steps' captions are cached before timing)
CASES = {
    "plain": ("shapes-vqvae.yaml", False),
    "LG, new captions": ("shapes-vqvae-lg.yaml", False),
    "LG, cached captions": ("shapes-vqvae-lg.yaml", True),
}
#: Parts of the LG step, by the method that computes them.
PARTS = {
    "text encoder, unmasked captions": (TextEncoder, "_encode_rows"),
    "text encoder, masked re-encoding": (TextEncoder, "encode_masked"),
    "masked text prediction (decoder + vocabulary head)": (MaskedTextPredictor, "masked_loss"),
    "Lras": (LanguageGuidance, "_relation_loss"),
}
WARMUP_STEPS = LOOKAHEAD_BATCHES
#: Step timers: elapsed time, or the CPU time of this process (all its threads), which other
#: processes on a shared machine inflate much less.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class Trainer:
    """A fresh run of one case, stepping through its own data stream as ``lgvq.experiment.train`` does."""

    def __init__(self, case: str, steps: int):
        name, cached = CASES[case]
        config = load_config(shipped_configs() / name, ["train.out_dir=/tmp/lgvq-bench-training"])
        seed_everything(0)
        self.run = build_run(config)
        self.optimizers = make_optimizers(self.run)
        dataset = load_dataset(**dataset_args(config, config.data.split, config.data.size))
        self.batches = batches_from(dataset, config, 0)
        if self.run.guidance is not None:
            encoder = self.run.guidance.text_encoder
            if cached:  # a later epoch: the captions of every step to come are in the cache
                upcoming = batches_from(dataset, config, 0)
                encoder.cache_captions([c for _ in range(WARMUP_STEPS + steps) for c in next(upcoming)[1]])
            self.batches = encode_ahead(self.batches, encoder)
        self.step_count = 0

    def step(self) -> None:
        images, captions = next(self.batches)
        train_step(self.run, self.optimizers, images, captions, self.step_count)
        self.step_count += 1

    def seconds_per_step(self, steps: int, clock=time.perf_counter) -> float:
        for _ in range(WARMUP_STEPS):
            self.step()
        t0 = clock()
        for _ in range(steps):
            self.step()
        return (clock() - t0) / steps


def throughput(conditions: list[str], thread_counts: list[int], steps: int, clock, cases: list[str]) -> list[dict]:
    rows = []
    for name in conditions:
        with condition(name) as info:
            timed = []
            for threads in thread_counts:
                with torch_threads(threads):
                    for case in cases:
                        seconds = Trainer(case, steps).seconds_per_step(steps, clock)
                        timed.append({"condition": name, "threads": threads, "case": case, "seconds": seconds})
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
    """Seconds per step of each part of the LG overhead (1 thread, no competitor, cached captions)."""
    with torch_threads(1):
        plain = Trainer("plain", steps).seconds_per_step(steps)
        lg = Trainer("LG, cached captions", steps)
        for _ in range(WARMUP_STEPS):
            lg.step()
        with parts_recorded(), profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                lg.step()
            lg_seconds = (time.perf_counter() - t0) / steps
    totals = {e.key: e.cpu_time_total / 1e6 / steps for e in prof.key_averages() if e.key in PARTS}
    parts = {label: totals.get(label, 0.0) for label in PARTS}
    # the parts are not nested in one another
    parts["rest (visual tokens, Lgsa, guidance backward + optimizer)"] = lg_seconds - plain - sum(parts.values())
    return {"plain step": plain, "LG step": lg_seconds, **parts}


def throughput_table(rows: list[dict]) -> str:
    lg_cases = [case for case in CASES if case != "plain" and any(r["case"] == case for r in rows)]
    lines = ["| condition | other processes' load (cores) | threads | plain steps/s | "
             + " | ".join(f"{case} steps/s | {case} / plain step" for case in lg_cases) + " |",
             "|---|---:|---:|---:|" + "---:|---:|" * len(lg_cases)]
    keyed = {(r["condition"], r["threads"], r["case"]): r for r in rows}
    for (name, threads, case), r in keyed.items():
        if case != "plain":
            continue
        cells = [f"{1 / keyed[(name, threads, c)]['seconds']:.2f} | {keyed[(name, threads, c)]['seconds'] / r['seconds']:.2f}×"
                 for c in lg_cases]
        lines.append(f"| {name} | {r['load']:.2f} | {threads} | {1 / r['seconds']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown_table(parts: dict[str, float]) -> str:
    plain = parts["plain step"]
    lines = ["| part of the step (1 thread, idle; LG: cached captions) | ms per step | × plain step |", "|---|---:|---:|"]
    lines += [f"| {label} | {1e3 * s:.0f} | {s / plain:.2f} |" for label, s in parts.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=LOOKAHEAD_BATCHES,
                        help=f"timed steps per case (default: one look-ahead window of {LOOKAHEAD_BATCHES})")
    parser.add_argument("--conditions", nargs="+", choices=list(COMPETITORS), default=["idle", "busy process"])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts to time (default: 1 and every core)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="what the throughput rows time (the breakdown is always wall time)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                        help="cases to time (plain is always timed: the ratios need it)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the LG overhead breakdown")
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to bench/results")
    args = parser.parse_args(argv)
    threads = set_cpu_threads()
    counts = sorted(set(args.threads or {1, threads}))
    cases = ["plain", *[case for case in args.cases if case != "plain"]]
    rows = throughput(args.conditions, counts, args.steps, CLOCKS[args.clock], cases)
    tables = [throughput_table(rows)]
    if not args.no_breakdown:
        tables.append(breakdown_table(lg_breakdown(args.steps)))
    note = (f"{args.steps} timed steps per case after {WARMUP_STEPS} untimed ones; batch 16, 32×32 images; "
            f"captions encoded {LOOKAHEAD_BATCHES} steps ahead (encode_ahead); throughput clock: {args.clock}.")
    if args.no_save:
        print("\n\n".join(tables))
    else:
        write_results("training", torch.device("cpu"), tables, [note])


if __name__ == "__main__":
    main()
