"""Assessing a trained demo model: its evaluation, an alignment probe on its frozen codebook,
and the data of its pictures (reconstructions, word–code similarities)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from lgvq.demo.settings import PREVIEW_IMAGES, heldout_set
from lgvq.experiment.evaluate import EvalResult, evaluate, fit_alignment_probe
from lgvq.experiment.run import load_run


@dataclass
class Assessment:
    """What an assessment job sends back: the scores and everything the pictures need."""

    result: EvalResult
    own_head: EvalResult | None
    reconstructions: torch.Tensor
    similarities: dict[str, object]


def assess_job(out_dir: Path, settings: dict, seed: int, progress: bool) -> Assessment:
    """Evaluate a trained demo model, probe its frozen codebook and render its pictures' data."""
    run = load_run(out_dir)
    val = heldout_set(run.config)
    encoder = run.guidance.text_encoder if run.guidance is not None else text_encoder()
    probe = fit_alignment_probe(run.model, val, encoder, steps=settings["probe_steps"], seed=seed,
                                device=run.device, progress=progress)
    result = evaluate(run.model, val, probe, seed=seed, device=run.device, progress=progress)
    own = None
    if run.guidance is not None:
        own = evaluate(run.model, val, run.guidance, seed=seed, device=run.device, progress=progress)
    preview = torch.stack([val[i]["image"] for i in range(PREVIEW_IMAGES)])
    with torch.no_grad():
        reconstructions = run.model(preview.to(run.device)).x_rec.cpu()
    return Assessment(result, own, reconstructions, _similarities(run.model, probe, val[0]))


@functools.cache
def text_encoder():
    """The demo's text encoder, loaded once per process (models without guidance, probes, tasks)."""
    from lgvq.text import load_text_encoder

    return load_text_encoder(cache=True)


@torch.no_grad()
def _similarities(model, probe, item) -> dict:
    """Word–word similarity of one caption and the similarity of the codes its words match."""
    encoder = text_encoder()
    text = encoder([item["caption"]])
    words = ~text.tokens.special_mask[0]
    labels = encoder.tokenizer.convert_ids_to_tokens(text.tokens.ids[0][words].tolist())
    z_q = model(item["image"][None].to(next(model.parameters()).device)).z_q
    word_sim, code_sim, _ = probe.word_code_similarities(z_q, text)
    return {"labels": labels, "word_sim": word_sim[0][words][:, words].cpu().numpy(),
            "code_sim": code_sim[0][words][:, words].cpu().numpy()}
