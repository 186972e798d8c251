"""Two training steps on 2 threads, run twice from one seed, end bit for bit equal.

Through the public API (``build_model``, ``VectorQuantizer`` inside it, Adam), the shapes of
``shapes-vqvae``: a batch of 16 32×32 images, 8×8 codes of 64 channels, so the codebook gather
covers N·d = 65,536 ≥ 32,768 elements, where ``codebook[idx]``'s backward used to add with
parallel atomics. Whether two runs of that old code differ depends on thread timing; the
regression check that fails on it every time is ``tests/ops/test_quantize.py``'s 1-vs-2-thread
comparison. ``lgvq train --config shapes-vqvae-lg`` on 2 threads was checked the same way by
hand (README, "Reproducibility"): too slow for the suite.
"""

import torch

from lgvq.models import build_model


def _two_steps() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("vqvae-tiny", dead_code_threshold=0.03).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for _ in range(2):
        optimizer.zero_grad()
        out = model(images)
        ((out.x_rec - images).abs().mean() + out.vq_loss).backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_two_thread_training_steps_repeat_bit_for_bit():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, second = _two_steps(), _two_steps()
    finally:
        torch.set_num_threads(previous)
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differing, differing
