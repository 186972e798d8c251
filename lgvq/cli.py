"""The ``lgvq`` command.

    lgvq demo [--seeds 0 1 2] [--tasks]         # plain VQ vs LG-VQ on the embedded data, with a report
    lgvq train --config configs/shapes-vqvae-lg.yaml [--set train.steps=500 ...] [--resume | --archive | --overwrite]
    lgvq eval RUN_DIR [--split S] [--probe-steps 200] [--fid-weights pt_inception.pth] [--json out.json]
    lgvq encode RUN_DIR IMAGE... --out codes.pt
    lgvq decode RUN_DIR codes.pt --out DIR
    lgvq reconstruct RUN_DIR IMAGE... --out DIR
    lgvq task NAME RUN_DIR [--split S] [--steps N] [--fid-weights pt_inception.pth] [--json out.json]
    lgvq convert-release LAST.ckpt RUN_DIR --text-encoder CLIP_DIR   # an LG-VQ release checkpoint → a run

Every failure the user can fix (missing or corrupt file, bad key or value, a run folder in
use, a missing extra, a full disk) ends with one line on stderr and exit status 2, not a traceback; so do
metrics that come out NaN, in evaluation or in training. Ctrl-C ends with one line saying where the
run can resume from, and exit status 130. Anything else (a bug) keeps its traceback. Nothing heavy is imported before
the arguments are parsed, so ``--help`` and argument errors are instant: each command
imports what it needs. A new command is a ``_parser`` entry plus a function in COMMANDS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from pathlib import Path

from lgvq.extras import MissingExtraError


DEVICES = ("auto", "cpu", "cuda")  # as train.device


class Interrupted(Exception):
    """Ctrl-C, with where the work can resume from."""


def _int_at_least(low: int):
    """An argparse type: an int >= ``low`` (argparse names the argument in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
        return value

    return parse


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a training run folder (train.out_dir): config.json + checkpoints/")
    p.add_argument("--device", default=None, choices=DEVICES, help="auto | cpu | cuda (default: the run's setting)")


def _add_data_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--split", default=None,
                   help=f"dataset split {what} (default: data.eval_split, else the data's held-out split: val or "
                        "test; a folder's only split, train)")
    p.add_argument("--root", default=None,
                   help="dataset folder to use instead of the run's data.root, e.g. a held-out folder of your images")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgvq", description="Fused vector quantization and LG-VQ.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train plain VQ and LG-VQ on the embedded data and write a report")
    p.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    p.add_argument("--steps", type=_int_at_least(1), default=None,
                   help="training steps per model (default: the demo's budget)")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="one seed, or several for mean ± sd and paired differences (default: 0); "
                        "seed folders already complete with the same settings are reused")
    p.add_argument("--tasks", action="store_true",
                   help="run every downstream task on both codebooks (default: VQA and captioning)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", default=None,
                   help="a YAML file or a shipped config's name, e.g. shapes-vqvae-lg (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=200 (repeatable)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue from the run folder's latest checkpoint (a resume may change only steps, "
                               "logging, checkpoint and image intervals, device, workers and evaluation settings)")
    existing.add_argument("--archive", action="store_const", dest="existing", const="archive", default="refuse",
                          help="start afresh; move a run already in train.out_dir to <out_dir>/archive/<UTC time>/")
    existing.add_argument("--overwrite", action="store_const", dest="existing", const="overwrite",
                          help="start afresh; delete a run already in train.out_dir")

    p = sub.add_parser("eval", help="PSNR, SSIM, codebook usage, perplexity, alignment metrics (and FID)")
    _add_run_args(p)
    _add_data_args(p, "to evaluate on")
    p.add_argument("--size", type=_int_at_least(1), default=None, help="number of evaluation images (shapes data)")
    p.add_argument("--probe-steps", type=_int_at_least(0), default=0,
                   help="train a fresh alignment probe for N steps on the frozen codes (for models without guidance)")
    p.add_argument("--fid-weights", default=None, help="local Inception weights (torch-fidelity pt_inception) for FID")
    p.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")

    p = sub.add_parser("encode", help="images → code indices")
    _add_run_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output .pt file holding {'indices': (B, h, w), 'files': [...]}")

    p = sub.add_parser("decode", help="code indices → images")
    _add_run_args(p)
    p.add_argument("codes", help="a .pt file written by `lgvq encode`")
    p.add_argument("--out", required=True, help="output folder for PNG files, named after the encoded images")

    p = sub.add_parser("reconstruct", help="images → codes → images, saved side by side")
    _add_run_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("task", help="a downstream task on a trained model's frozen codes")
    p.add_argument("name", help="text-to-image | unconditional | completion | captioning | vqa | "
                                "semantic-synthesis | reconstruction")
    _add_run_args(p)
    _add_data_args(p, "the task is evaluated on (its networks train on the run's data.split)")
    p.add_argument("--steps", type=_int_at_least(1), default=None, help="training steps of the task model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fid-weights", default=None,
                   help="local Inception weights (torch-fidelity pt_inception) for FID of generated images")
    p.add_argument("--samples", default=None,
                   help="PNG file for a grid of the generated images (default: RUN/tasks/NAME-seedSEED.png)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")

    p = sub.add_parser("convert-release", help="LG-VQ release checkpoint (.ckpt) → an lgvq run folder")
    p.add_argument("checkpoint", help="a Lightning checkpoint of the release's VQModel (LG_vqgan.py or LG_cvq.py)")
    p.add_argument("out", help="the run folder to write (must not hold a run)")
    p.add_argument("--config", default=None,
                   help="YAML config for data, loss files and loss weights (e.g. configs/paper/celeba-vqgan-lg.yaml)")
    p.add_argument("--text-encoder", default=None, help="local CLIP ViT-B/32 folder, the release's text tower")
    p.add_argument("--no-guidance", dest="guidance", action="store_false",
                   help="convert the autoencoder and discriminator only")
    p.add_argument("--release-config", default=None,
                   help="the release YAML the checkpoint was trained with (default: LOGDIR/configs/*-project.yaml)")
    p.add_argument("--guidance-heads", type=int, default=None,
                   help="attention heads of its guidance (ddconfig.mask_transformer_head), when no config says")
    p.add_argument("--guidance-layers", type=int, default=None, help="depth of its guidance, checked against the tensors")
    return parser


def _load_images(files: list[str], image_size: int):
    import torch

    from lgvq.data.images import load_image

    return torch.stack([load_image(Path(f), image_size) for f in files])


def _load_run(args):
    from lgvq.experiment.run import load_run

    return load_run(args.run, args.device)


def _eval_split(run, given: str | None, root: str | None) -> str:
    """The split to evaluate on: --split, else data.eval_split, else the data's held-out split."""
    from lgvq.experiment.config import ConfigError
    from lgvq.experiment.splits import check_split, held_out_split

    data = run.config.data
    split = given or data.eval_split or held_out_split(data.name)
    try:
        check_split("--split" if given else "data.eval_split", data.name, split)
    except ConfigError as error:
        raise ConfigError(f"{error}; pass --split {held_out_split(data.name)}") from None
    if data.name == "folder" and root is None:
        warnings.warn(f"folder data has no held-out split: evaluating on the training images in {data.root} "
                      "(pass --root DIR to evaluate on a held-out folder)", stacklevel=2)
    return split


def _dataset(run, split: str, size: int, root: str | None = None):
    """``split`` of the run's data, read from ``root`` instead of data.root if given."""
    from lgvq.data import load_dataset
    from lgvq.experiment.config import config_with
    from lgvq.experiment.splits import dataset_args

    config = run.config if root is None else config_with(run.config, data={"root": root})
    return load_dataset(**dataset_args(config, split, size))


def _load_finite_run(args):
    """The run of ``args.run``, or a ValueError naming its weights that hold NaN or Inf."""
    run = _load_run(args)
    bad = [f"{name}.{key}" for name, module in run.modules().items() for key, value in module.state_dict().items()
           if value.is_floating_point() and not bool(value.isfinite().all())]
    if bad:
        listed = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise ValueError(f"{len(bad)} weight tensor(s) of {args.run} hold NaN or Inf ({listed}): its checkpoint is "
                         "corrupt or the run diverged")
    return run


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics, or a ValueError naming those that are NaN or infinite."""
    bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise ValueError(f"metrics are not finite ({bad}): the model produces NaN or Inf on this data")
    return metrics


def _report(metrics: dict[str, float], json_out: str | None, width: int) -> None:
    for key, value in metrics.items():
        print(f"{key:>{width}}: {value:.4f}")
    if json_out:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2))


def cmd_train(args) -> None:
    from lgvq.experiment.config import load_config
    from lgvq.experiment.train import train

    config = load_config(args.config, args.overrides)
    try:
        train(config, resume=args.resume, existing=args.existing)
    except KeyboardInterrupt:
        raise Interrupted(_resume_point(Path(config.train.out_dir))) from None
    print(f"run folder: {config.train.out_dir}")


def _resume_point(out_dir: Path) -> str:
    """Where an interrupted run can continue: its newest complete checkpoint (checkpoints are
    written atomically, so an interrupted write leaves the previous one whole)."""
    from lgvq.experiment.checkpoint import checkpoint_step, is_complete, step_folders

    complete = [p for p in step_folders(out_dir / "checkpoints") if is_complete(p)]
    if not complete:
        return f"{out_dir} has no checkpoint yet: start again (the retry clears what this start left)"
    return (f"resume from step {checkpoint_step(complete[-1])} ({complete[-1]}) with the same command and --resume")


def cmd_eval(args) -> None:
    from lgvq.experiment.evaluate import evaluate, fit_alignment_probe

    run = _load_finite_run(args)
    dataset = _dataset(run, _eval_split(run, args.split, args.root), args.size or run.config.data.eval_size, args.root)
    guidance = run.guidance
    if args.probe_steps > 0:
        from lgvq.text import load_text_encoder

        encoder = guidance.text_encoder if guidance is not None else load_text_encoder(max_length=run.config.guidance.max_length)
        guidance = fit_alignment_probe(run.model, dataset, encoder, steps=args.probe_steps, device=run.device)
    result = evaluate(run.model, dataset, guidance, inception_weights=args.fid_weights, device=run.device)
    _report(_finite_metrics(result.as_dict()), args.json_out, 18)


def cmd_encode(args) -> None:
    import torch

    run = _load_run(args)
    images = _load_images(args.images, run.model.config.image_size).to(run.device)
    with torch.no_grad():
        _, indices = run.model.encode(images)
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            torch.save({"indices": indices.cpu(), "files": args.images}, f)
    except OSError as error:
        raise OSError(f"--out {out}: cannot write there ({error.strerror or error}): must be a file path in a "
                      "writable folder") from None
    print(f"codes {tuple(indices.shape)} → {out}")


def _load_codes(path: str, n_embed: int):
    """(indices, source file names or None) from a file written by ``lgvq encode``."""
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"codes file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a non-.pt file fails in many ways inside the unpickler
        raise ValueError(f"{path} is not a codes file written by `lgvq encode` ({type(error).__name__})") from error
    indices = payload.get("indices") if isinstance(payload, dict) else payload
    if not isinstance(indices, torch.Tensor) or indices.dim() != 3 or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{path} must hold integer indices of shape (B, h, w)")
    if bool((indices < 0).any()) or bool((indices >= n_embed).any()):
        raise ValueError(f"{path}: code indices must lie in [0, {n_embed})")
    files = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(files, list) or len(files) != len(indices):
        files = None
    return indices.long(), files


def decoded_names(files: list[str] | None, count: int) -> list[str]:
    """PNG names for decoded images: each source image's name, numbered where names repeat."""
    if files is None:
        return [f"decoded_{i:04d}.png" for i in range(count)]
    stems = [Path(f).stem for f in files]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [f"{s}_{i:04d}.png" if s in repeated else f"{s}.png" for i, s in enumerate(stems)]


def cmd_decode(args) -> None:
    import torch

    from lgvq.experiment.visualize import save_image_grid

    run = _load_run(args)
    indices, files = _load_codes(args.codes, run.model.config.n_embed)
    with torch.no_grad():
        images = run.model.decode_indices(indices.to(run.device))
    out = Path(args.out)
    for image, name in zip(images, decoded_names(files, len(images))):
        save_image_grid([image[None]], out / name, scale=1)
    print(f"{len(images)} images → {out}")


def cmd_reconstruct(args) -> None:
    import torch

    from lgvq.experiment.visualize import save_image_grid

    run = _load_run(args)
    images = _load_images(args.images, run.model.config.image_size).to(run.device)
    with torch.no_grad():
        rec = run.model(images).x_rec
    path = save_image_grid([images, rec], Path(args.out) / "reconstructions.png")
    print(f"originals (top) and reconstructions (bottom) → {path}")


def cmd_task(args) -> None:
    import dataclasses

    from lgvq.tasks.runner import TaskBudget, check_task_name, run_task

    check_task_name(args.name)  # before the minutes of loading a run and its data
    from lgvq.text import load_text_encoder

    run = _load_finite_run(args)
    budget = TaskBudget() if args.steps is None else dataclasses.replace(TaskBudget(), steps=args.steps)
    train_set = _dataset(run, run.config.data.split, run.config.data.size)  # task models train on the run's data
    test_set = _dataset(run, _eval_split(run, args.split, args.root), run.config.data.eval_size, args.root)
    encoder = run.guidance.text_encoder if run.guidance is not None else load_text_encoder()
    samples = Path(args.samples or Path(args.run) / "tasks" / f"{args.name}-seed{args.seed}.png")
    metrics = run_task(args.name, run.model, train_set, test_set, encoder, budget, args.seed,
                       fid_features=args.fid_weights, samples_to=samples)
    _report(_finite_metrics(metrics), args.json_out, 24)
    if samples.is_file():
        print(f"generated images → {samples}")


def cmd_demo(args) -> None:
    from lgvq.demo import DEMO_TASKS, run_demo

    report = run_demo(Path(args.out), steps=args.steps, seeds=args.seeds, tasks=None if args.tasks else DEMO_TASKS,
                      progress=not args.quiet)
    print(f"report: {report}")


def cmd_convert_release(args) -> None:
    from lgvq.experiment.convert import convert_release

    written = convert_release(args.checkpoint, args.out, config=args.config, text_encoder=args.text_encoder,
                              guidance=args.guidance, release_config=args.release_config,
                              layers=args.guidance_layers, heads=args.guidance_heads)
    print(f"run: {args.out} (checkpoint {written.name})")


COMMANDS = {
    "demo": cmd_demo, "train": cmd_train, "eval": cmd_eval, "encode": cmd_encode,
    "decode": cmd_decode, "reconstruct": cmd_reconstruct, "task": cmd_task,
    "convert-release": cmd_convert_release,
}


@contextlib.contextmanager
def _one_line_warnings():
    """Warnings (a checkpoint fallback, unscored samples) as ``lgvq: warning: ...`` lines on stderr."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"lgvq: warning: {message}", file=sys.stderr)
        yield


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _one_line_warnings():
            COMMANDS[args.command](args)
    except (OSError, ValueError, MissingExtraError) as err:  # what users cause and can fix; every message names the cause
        print(f"lgvq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as stop:
        where = f": {stop}" if isinstance(stop, Interrupted) else ""
        print(f"lgvq {args.command}: interrupted{where}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())
