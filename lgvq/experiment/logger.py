"""Run logs: one JSON object per line (``metrics.jsonl``) and, optionally, TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lgvq.extras import needs_extra


def as_floats(metrics: dict) -> dict[str, float]:
    """Python floats of a dict of numbers and scalar tensors (None values dropped).

    The tensors of each device are read back in one copy: one device→host sync per call
    instead of one per value.
    """
    import torch  # here, not at the top: the CLI imports this module before it needs torch

    values = {k: float(v) for k, v in metrics.items() if v is not None and not isinstance(v, torch.Tensor)}
    by_device: dict = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(key)
    for keys in by_device.values():
        read = torch.stack([metrics[k].detach().reshape(()).float() for k in keys]).tolist()
        values.update(zip(keys, read))
    return {k: values[k] for k in metrics if k in values}


class RunLogger:
    """Appends to ``out_dir/metrics.jsonl``, which first keeps only the records up to
    ``start_step``: a fresh run (0) starts an empty log, and a resume drops what was logged
    after its checkpoint, so no step appears twice (in TensorBoard too). A NaN or infinite
    value is written as ``null`` (JSON has no NaN), so the record shows which values broke."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled  # False on non-zero ranks: only rank 0 writes
        self.out_dir = Path(out_dir)
        self.writer = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self._truncate_after(start_step)
        if tensorboard:
            with needs_extra("train"):
                from torch.utils.tensorboard import SummaryWriter

            # A resume opens a new event file; purge_step tells TensorBoard to drop what the
            # earlier files logged after the checkpoint, so every step shows once, as here.
            purge = start_step + 1 if start_step else None
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        values = as_floats(metrics)
        record = {k: v if math.isfinite(v) else None for k, v in values.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": prefix, **record}) + "\n")
        if self.writer is not None:
            for key, value in values.items():  # TensorBoard plots NaN and Inf as such
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def _truncate_after(self, step: int) -> None:
        kept = [r for r in read_log(self.path) if r["step"] <= step] if self.path.exists() else []
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
