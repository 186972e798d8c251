"""LG training through the CLI: a resumed run is the uninterrupted run, bit for bit, and
``guidance.cache_dir`` serves the captions from a memory-mapped table.

The resumed process starts with an empty caption cache while the uninterrupted one serves
the second epoch's captions from it: the two agree only because a caption's features do not
depend on the batch it was encoded in (``lgvq.text.base.CHUNK_ROWS``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

# 16 images in batches of 8 with their first caption: every epoch (2 steps) repeats the captions.
# (In batches of 4 the former cache read every caption alone, and a resume happened to be exact.)
SETTINGS = ["data.size=16", "data.batch_size=8", "data.caption_mode=first", "train.tensorboard=false",
            "train.image_every=1000", "train.log_every=1"]


def lgvq_train(out_dir: Path, steps: int, *flags: str) -> None:
    lgvq = shutil.which("lgvq", path=str(Path(sys.executable).parent)) or shutil.which("lgvq")
    sets = [f"train.out_dir={out_dir}", f"train.steps={steps}", f"train.ckpt_every={steps}", *SETTINGS]
    command = [lgvq, "train", "--config", "shapes-vqvae-lg", *[a for s in sets for a in ("--set", s)], *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # bit-reproducible layout
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def final_weights(out_dir: Path) -> dict:
    checkpoint = max((out_dir / "checkpoints").glob("step_*"))
    return {f"{f.name}:{k}": v for f in sorted(checkpoint.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_resumed_lg_run_equals_the_uninterrupted_one(tmp_path):
    lgvq_train(tmp_path / "straight", 6)
    lgvq_train(tmp_path / "resumed", 3)  # stops in the second epoch, its captions cached
    lgvq_train(tmp_path / "resumed", 6, "--resume")
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and any(":guidance." in k for k in straight)
    different = [k for k in straight if not straight[k].equal(resumed[k])]
    assert different == []


def test_cache_dir_builds_a_table_of_every_caption_and_reuses_it(tmp_path):
    tables = tmp_path / "tables"
    lgvq_train(tmp_path / "run", 1, "--set", f"guidance.cache_dir={tables}")
    (table,) = tables.iterdir()
    meta = json.loads((table / "meta.json").read_text())
    assert meta["count"] == len(json.loads((table / "captions.json").read_text())) == 16  # the first captions
    stamp = (table / "words.npy").stat().st_mtime_ns
    lgvq_train(tmp_path / "run", 2, "--resume", "--set", f"guidance.cache_dir={tables}")
    assert (table / "words.npy").stat().st_mtime_ns == stamp  # current: reused, not rebuilt
