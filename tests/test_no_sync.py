"""No device→host sync in the hot path.

On the CPU every Python-level read of a tensor's value is counted (``SyncCounter``): on a
GPU each would be a sync that stalls the launch queue and prevents CUDA-graph capture. The
ops, a quantizer's training step (every variant), ``LanguageGuidance`` forward + backward and
a whole guided ``train_step`` (forward, backward, optimizer step) must make none. Strict mode
(``lgvq.set_strict``) brings the value checks back, and the counter sees them: that is what
makes the zero count mean something. The gpu-marked twin runs the same steps on CUDA under
``torch.cuda.set_sync_debug_mode("error")``, which also catches syncs inside C++ ops (a CUDA
``bincount``, a boolean-mask index, a blocking host→device copy) that no Python patch sees.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import pytest
import torch

import lgvq
from lgvq.compat import LFQ, IndexPropagationQuantize
from lgvq.checks import strict_mode
from lgvq.experiment.config import load_config
from lgvq.experiment.run import build_run
from lgvq.experiment.train import make_optimizers, train_step
from lgvq.guidance import LanguageGuidance
from lgvq.ops import (
    code_counts_and_sums,
    codebook_entropy,
    index_backprop_quantize,
    lfq_entropy,
    nearest_code,
    relation_alignment_loss,
    vector_quantize,
)
from lgvq.quantize import ClusteredVectorQuantizer, ResidualQuantizer, VectorQuantizer
from lgvq.text import load_text_encoder

#: Tensor methods that read values back to the host (``float(t)``, ``int(t)``, ``if t:``,
#: ``t.item()``, ``t.cpu()``, …). A ``.to(device)`` is not counted: on the CPU it cannot tell a
#: copy to the host from one to the model's device; the GPU twin checks copies.
SYNC_METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "cpu", "tolist", "numpy")

#: Code whose tensors live on the host even when training on a GPU, so their reads are no
#: device sync: torch's non-capturable optimizers keep their step counter on the CPU, and the
#: tokenizer's output is checked before it is copied to the device, and the text encoder reads
#: caption lengths only for tensors on the CPU (``_length_groups``, ``_encode_packed``).
#: (file part, function)
HOST_SIDE = (
    (f"torch{Path('/optim/')}", None),
    (str(Path("lgvq/text/base.py")), "tokenize"),
    (str(Path("lgvq/text/base.py")), "_length_groups"),
    (str(Path("lgvq/text/base.py")), "_encode_packed"),
)

LGVQ_ROOT = str(Path(lgvq.__file__).parent)
CAPTIONS = ["a red circle left of a blue square", "a green triangle", "a yellow star above a circle", "an orange square"]


class SyncCounter:
    """Context manager recording every host read of a tensor value: ``calls`` holds one
    "method at file:line" entry per read, naming the innermost lgvq frame."""

    def __init__(self):
        self.calls: list[str] = []
        self._saved: dict[str, object] = {}

    def __enter__(self) -> SyncCounter:
        for name in SYNC_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)

    def _counted(self, name, original):
        def counted(tensor, *args, **kwargs):
            site = _device_site(sys._getframe(1))
            if site is not None:
                self.calls.append(f"{name} at {site}")
            return original(tensor, *args, **kwargs)

        return counted


def _device_site(frame) -> str | None:
    """Where a read happened (the innermost lgvq frame, else the caller), or None when it
    happened inside host-side code (``HOST_SIDE``)."""
    stack = traceback.extract_stack(frame)
    for entry in stack:
        for part, function in HOST_SIDE:
            if part in entry.filename and function in (None, entry.name):
                return None
    ours = [e for e in stack if e.filename.startswith(LGVQ_ROOT)]
    entry = (ours or stack)[-1]
    return f"{entry.filename}:{entry.lineno} ({entry.name})"


def count_syncs(fn) -> list[str]:
    with SyncCounter() as counter:
        fn()
    return counter.calls


@pytest.fixture(autouse=True)
def accelerator_paths(monkeypatch):
    """Take the paths a GPU step takes: on the CPU, masked text prediction selects the masked
    rows (a data-dependent size, free there), which on an accelerator would sync inside C++
    where the counter cannot see it."""
    from lgvq.guidance import semantic

    monkeypatch.setattr(semantic, "_selection_is_free", lambda mask: False)


@pytest.fixture
def strict():
    with strict_mode():
        yield


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder()


# ---- the ops --------------------------------------------------------------------------------

def _op_calls(device="cpu", backend="torch"):
    z = torch.randn(2, 5, 8, device=device, requires_grad=True)
    codebook = torch.randn(16, 8, device=device, requires_grad=True)
    words, tokens = torch.randn(2, 4, 8, device=device), torch.randn(2, 6, 8, device=device)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], device=device)
    codes = torch.randn(2, 6, 8, device=device, requires_grad=True)

    def run():
        nearest_code(z.detach(), codebook.detach(), "cos", backend=backend)
        z_q, idx, loss = vector_quantize(z, codebook, backend=backend)
        (z_q.sum() + loss).backward()
        code_counts_and_sums(z.detach(), idx, 16, backend=backend)
        relation_alignment_loss(words, mask, tokens, codes, backend=backend).backward()
        z_q, _ = index_backprop_quantize(z, codebook, backend=backend)
        sample_entropy, avg_entropy = codebook_entropy(z, codebook, metric="l2", backend=backend)
        lfq_sample, lfq_avg = lfq_entropy(z[..., :4], backend=backend)
        (z_q.sum() + sample_entropy - avg_entropy + lfq_sample - lfq_avg).backward()

    return run


def test_ops_make_no_sync():
    assert count_syncs(_op_calls()) == []


def test_strict_mode_checks_are_seen_by_the_counter(strict):
    """Each hot-path value check (NaN/Inf of both inputs, the index range, the 0/1 mask)
    syncs; a check_finite put back into the default path would show up the same way."""
    calls = count_syncs(_op_calls())
    assert len(calls) >= 8
    assert any("lgvq/checks.py" in c for c in calls) and any("lgvq/ops/stats.py" in c for c in calls)


def test_strict_mode_rejects_what_the_default_path_does_not_read(strict):
    with pytest.raises(ValueError, match="z contains NaN or Inf"):
        vector_quantize(torch.full((2, 3), float("nan")), torch.randn(4, 3))


# ---- quantizers: every training-step variant, both faces -------------------------------------

QUANTIZERS = {
    "vq+restarts": lambda: VectorQuantizer(32, 8, dead_code_threshold=0.5),
    "ema+restarts": lambda: VectorQuantizer(32, 8, ema=True, dead_code_threshold=0.5),
    "legacy-cos": lambda: VectorQuantizer(32, 8, legacy=True, metric="cos", dead_code_threshold=0.5),
    "kmeans": lambda: VectorQuantizer(32, 8, kmeans_init=True),
    "cvq-probrandom": lambda: ClusteredVectorQuantizer(32, 8, contrastive=True),
    "cvq-closest": lambda: ClusteredVectorQuantizer(32, 8, anchor="closest", first_batch_only=True),
    "cvq-random": lambda: ClusteredVectorQuantizer(32, 8, anchor="random", dead_code_threshold=0.5),
    "vq+llamagen-entropy": lambda: VectorQuantizer(32, 8, entropy_loss_ratio=0.1, track_usage=True),
    "ibq+entropy": lambda: IndexPropagationQuantize(32, 8, use_entropy_loss=True, track_usage=True),
    "lfq": lambda: LFQ(dim=8, codebook_size=256, track_usage=True),
}


def _quantizer_steps(q, device="cpu"):
    z = torch.randn(2, 8, 4, 4, device=device, requires_grad=True)
    z_last = torch.randn(2, 4, 4, 8, device=device, requires_grad=True)

    def run():
        z_q, loss, _ = q(z)  # the taming face (the peer's, for IBQ and LFQ)
        loss = sum(loss) if isinstance(loss, tuple) else loss  # IBQ's entropy terms
        (z_q.square().mean() + loss).backward()
        out = q.quantize(z_last)  # the modern face
        (out.z_q.square().mean() + out.loss).backward()

    return run


@pytest.mark.parametrize("name", QUANTIZERS)
def test_quantizer_training_steps_make_no_sync(name):
    q = QUANTIZERS[name]().train()
    _quantizer_steps(q)()  # the first step may sync: k-means initialisation, a one-off
    assert count_syncs(_quantizer_steps(q)) == []


@pytest.mark.parametrize("metric, codebook_dim", [("l2", None), ("cos", 4)])
def test_residual_quantizer_training_steps_make_no_sync(metric, codebook_dim):
    rq = ResidualQuantizer(32, 8, 3, codebook_dim=codebook_dim, metric=metric, dead_code_threshold=0.5,
                           track_usage=True).train()
    z = torch.randn(2, 4, 4, 8, requires_grad=True)

    def run():
        out = rq.quantize(z)
        (out.z_q.square().mean() + out.loss).backward()

    run()
    assert count_syncs(run) == []


# ---- language guidance and a whole guided training step ----------------------------------------

@pytest.mark.minilm
def test_language_guidance_makes_no_sync(text_encoder):
    guidance = LanguageGuidance(8, 2, text_encoder)
    z_q = torch.randn(4, 8, 2, 2, requires_grad=True)

    def run():
        out = guidance(z_q, CAPTIONS)
        out.loss.backward()

    assert count_syncs(run) == []


def guided_run(tmp_path, device="cpu"):
    """vqgan-tiny with the GAN on from step 0, dead-code restarts, gradient clipping and guidance."""
    config = load_config(None, [
        f"train.out_dir={tmp_path}", "train.tensorboard=false", f"train.device={device}", "data.batch_size=2",
        "model.name=vqgan-tiny", "model.loss={disc_start: 0}", "model.overrides={dead_code_threshold: 0.5}",
        "guidance.enabled=true", "optim.grad_clip=1.0",
    ])
    run = build_run(config)
    return run, make_optimizers(run)


@pytest.mark.minilm
def test_guided_train_step_makes_no_sync(tmp_path):
    run, optimizers = guided_run(tmp_path)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    train_step(run, optimizers, images, CAPTIONS[:2], 0)
    calls = count_syncs(lambda: train_step(run, optimizers, images, CAPTIONS[:2], 1))
    assert calls == [], "\n".join(calls)


# ---- the GPU twin -----------------------------------------------------------------------------

def _warm_then_checked(run):
    """Run once (autotuning and cuDNN set-up may sync on first use), then under the error mode."""
    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gpu_ops_make_no_sync(backend):
    _warm_then_checked(_op_calls("cuda", backend))


@pytest.mark.gpu
@pytest.mark.parametrize("name", QUANTIZERS)
def test_gpu_quantizer_training_steps_make_no_sync(name):
    _warm_then_checked(_quantizer_steps(QUANTIZERS[name]().cuda().train(), "cuda"))


@pytest.mark.gpu
@pytest.mark.minilm
def test_gpu_guided_train_step_makes_no_sync(tmp_path):
    run, optimizers = guided_run(tmp_path, "cuda")
    images = torch.rand(2, 3, 32, 32, device="cuda") * 2 - 1
    steps = iter(range(2))
    _warm_then_checked(lambda: train_step(run, optimizers, images, CAPTIONS[:2], next(steps)))
