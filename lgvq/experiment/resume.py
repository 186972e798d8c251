"""Opening a run folder for training: a fresh start (after archiving or overwriting a run
already there, if asked) or the checkpoint a resume continues from, checked against the run's
saved config before anything is written."""

from __future__ import annotations

from pathlib import Path

from lgvq.experiment.checkpoint import checkpoint_step, latest_checkpoint, remove_stale_temporaries
from lgvq.experiment.config import ExperimentConfig, config_from_dict, config_to_dict
from lgvq.experiment.run_folder import RunFolderError, check_resume_config, clear_for_fresh_run, saved_config


def resume_checkpoint(ckpt_dir: Path) -> Path:
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    return latest


def open_run_folder(config: ExperimentConfig, resume: bool, existing: str) -> Path | None:
    """Ready the locked run folder: the checkpoint to resume from, or None for a fresh run.

    Every refusal comes before anything is written; the only changes are the removal of
    temporaries that interrupted runs left, and the archive or overwrite asked for.
    """
    out_dir = Path(config.train.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    remove_stale_temporaries(ckpt_dir)  # safe: the lock keeps every other writer out
    if not resume:
        clear_for_fresh_run(out_dir, existing)
        return None
    checkpoint = resume_checkpoint(ckpt_dir)
    saved = out_dir / "config.json"
    if saved.is_file():
        check_resume_config(config_to_dict(config_from_dict(saved_config(saved))), config_to_dict(config), saved)
    step = checkpoint_step(checkpoint)
    if config.train.steps < step:
        raise RunFolderError(
            f"train.steps={config.train.steps} is before the checkpoint {checkpoint} (step {step}); "
            f"a resume trains up to train.steps, so it must be >= {step}"
        )
    return checkpoint
