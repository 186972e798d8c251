"""The ``lgvq`` command.

    lgvq demo [--seeds 0 1 2] [--tasks]         # plain VQ vs LG-VQ on the embedded data, with a report
    lgvq train --config configs/shapes-vqvae-lg.yaml [--set train.steps=500 ...] [--resume]
    lgvq eval RUN_DIR [--probe-steps 200] [--fid-weights pt_inception.pth]
    lgvq encode RUN_DIR IMAGE... --out codes.pt
    lgvq decode RUN_DIR codes.pt --out DIR
    lgvq reconstruct RUN_DIR IMAGE... --out DIR
    lgvq task NAME RUN_DIR [--steps N] [--fid-weights pt_inception.pth]   # text-to-image, captioning, vqa, ...
    lgvq convert-release LAST.ckpt RUN_DIR --text-encoder CLIP_DIR   # an LG-VQ release checkpoint → a run

Every failure the user can fix (missing file, bad key, bad value) ends with one line on
stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lgvq.convert import add_convert_release_parser, cmd_convert_release


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a training run folder (train.out_dir): config.json + checkpoints/")
    p.add_argument("--device", default=None, help="cpu | cuda (default: the run's setting)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgvq", description="Fused vector quantization and LG-VQ.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train plain VQ and LG-VQ on the embedded data and write a report")
    p.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the demo's budget)")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="one seed, or several for mean ± sd and paired differences (default: 0); "
                        "seed folders already complete with the same settings are reused")
    p.add_argument("--tasks", action="store_true", help="also run the downstream tasks on both codebooks")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=200 (repeatable)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    existing.add_argument("--archive", action="store_const", dest="existing", const="archive", default="refuse",
                          help="start afresh; move a run already in train.out_dir to <out_dir>/archive/<UTC time>/")
    existing.add_argument("--overwrite", action="store_const", dest="existing", const="overwrite",
                          help="start afresh; delete a run already in train.out_dir")

    p = sub.add_parser("eval", help="PSNR, SSIM, codebook usage, perplexity, alignment metrics (and FID)")
    _add_run_args(p)
    p.add_argument("--split", default=None, help="dataset split (default: the config's eval_split)")
    p.add_argument("--size", type=int, default=None, help="number of evaluation images (shapes data)")
    p.add_argument("--probe-steps", type=int, default=0,
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
    p.add_argument("--out", required=True, help="output folder for PNG files")

    p = sub.add_parser("reconstruct", help="images → codes → images, saved side by side")
    _add_run_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("task", help="a downstream task on a trained model's frozen codes")
    p.add_argument("name", help="text-to-image | unconditional | completion | captioning | vqa | "
                                "semantic-synthesis | reconstruction")
    _add_run_args(p)
    p.add_argument("--steps", type=int, default=None, help="training steps of the task model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fid-weights", default=None,
                   help="local Inception weights (torch-fidelity pt_inception) for FID of generated images")
    add_convert_release_parser(sub)
    return parser


def _load_images(files: list[str], image_size: int) -> torch.Tensor:
    from lgvq.data.images import load_image

    return torch.stack([load_image(Path(f), image_size) for f in files])


def cmd_train(args) -> None:
    from lgvq.config import load_config
    from lgvq.train import train

    config = load_config(args.config, args.overrides)
    train(config, resume=args.resume, existing=args.existing)
    print(f"run folder: {config.train.out_dir}")


def cmd_eval(args) -> None:
    from lgvq.data import load_dataset
    from lgvq.evaluate import evaluate, fit_alignment_probe
    from lgvq.runs import load_run
    from lgvq.train import dataset_args

    run = load_run(args.run, args.device)
    data = run.config.data
    dataset = load_dataset(**dataset_args(run.config, args.split or data.eval_split, args.size or data.eval_size))
    guidance = run.guidance
    if args.probe_steps > 0:
        from lgvq.text import load_text_encoder

        encoder = guidance.text_encoder if guidance is not None else load_text_encoder(max_length=run.config.guidance.max_length)
        guidance = fit_alignment_probe(run.model, dataset, encoder, steps=args.probe_steps, device=run.device)
    result = evaluate(run.model, dataset, guidance, inception_weights=args.fid_weights, device=run.device)
    metrics = result.as_dict()
    for key, value in metrics.items():
        print(f"{key:>18}: {value:.4f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(metrics, indent=2))


@torch.no_grad()
def cmd_encode(args) -> None:
    from lgvq.runs import load_run

    run = load_run(args.run, args.device)
    images = _load_images(args.images, run.model.config.image_size).to(run.device)
    _, indices = run.model.encode(images)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"indices": indices.cpu(), "files": args.images}, out)
    print(f"codes {tuple(indices.shape)} → {out}")


def _load_codes(path: str, num_codes: int) -> torch.Tensor:
    if not Path(path).is_file():
        raise FileNotFoundError(f"codes file not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    indices = payload["indices"] if isinstance(payload, dict) else payload
    if not isinstance(indices, torch.Tensor) or indices.dim() != 3 or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{path} must hold integer indices of shape (B, h, w)")
    if bool((indices < 0).any()) or bool((indices >= num_codes).any()):
        raise ValueError(f"{path}: code indices must lie in [0, {num_codes})")
    return indices.long()


@torch.no_grad()
def cmd_decode(args) -> None:
    from lgvq.runs import load_run
    from lgvq.visualize import save_image_grid

    run = load_run(args.run, args.device)
    indices = _load_codes(args.codes, run.model.config.n_embed).to(run.device)
    images = run.model.decode_indices(indices)
    out = Path(args.out)
    for i, image in enumerate(images):
        save_image_grid([image[None]], out / f"decoded_{i:04d}.png", scale=1)
    print(f"{len(images)} images → {out}")


@torch.no_grad()
def cmd_reconstruct(args) -> None:
    from lgvq.runs import load_run
    from lgvq.visualize import save_image_grid

    run = load_run(args.run, args.device)
    images = _load_images(args.images, run.model.config.image_size).to(run.device)
    rec = run.model(images).x_rec
    path = save_image_grid([images, rec], Path(args.out) / "reconstructions.png")
    print(f"originals (top) and reconstructions (bottom) → {path}")


def cmd_task(args) -> None:
    import dataclasses

    from lgvq.data import load_dataset
    from lgvq.runs import load_run
    from lgvq.tasks import TaskBudget, run_task
    from lgvq.text import load_text_encoder
    from lgvq.train import dataset_args

    run = load_run(args.run, args.device)
    budget = TaskBudget() if args.steps is None else dataclasses.replace(TaskBudget(), steps=args.steps)
    train_set = load_dataset(**dataset_args(run.config, run.config.data.split, run.config.data.size))
    test_set = load_dataset(**dataset_args(run.config, run.config.data.eval_split, run.config.data.eval_size))
    encoder = run.guidance.text_encoder if run.guidance is not None else load_text_encoder()
    metrics = run_task(args.name, run.model, train_set, test_set, encoder, budget, args.seed,
                       fid_features=args.fid_weights)
    for key, value in metrics.items():
        print(f"{key:>24}: {value:.4f}")


def cmd_demo(args) -> None:
    from lgvq.demo import run_demo
    from lgvq.tasks import TaskBudget

    budget = TaskBudget() if args.tasks else None
    report = run_demo(Path(args.out), steps=args.steps, seeds=args.seeds, task_budget=budget, progress=not args.quiet)
    print(f"report: {report}")


COMMANDS = {
    "demo": cmd_demo, "train": cmd_train, "eval": cmd_eval, "encode": cmd_encode,
    "decode": cmd_decode, "reconstruct": cmd_reconstruct, "task": cmd_task,
    "convert-release": cmd_convert_release,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError, TypeError, OSError) as err:
        print(f"lgvq {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
