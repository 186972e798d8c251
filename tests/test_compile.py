"""torch.compile over a VQ model with ``VectorQuantizer`` and ``LanguageGuidance``: no graph break.

``fullgraph=True`` turns any graph break into an error, so a passing compile is the proof. On
the CPU the backend is ``aot_eager``: Dynamo's capture, the registered ops' fake
implementations and their autograd formulas are all exercised, and the compiled step must
give eager's loss and gradients; Inductor's C++ code generation would add minutes of compiler
time on a small machine and nothing about graph breaks. The Triton variant runs the kernels in
the interpreter. The gpu-marked twin compiles the same step with Inductor on CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lgvq.compat import LFQ, IndexPropagationQuantize
from lgvq.guidance import LanguageGuidance
from lgvq.quantize import VectorQuantizer
from lgvq.text import BertLikeEncoder
from lgvq.text.local_files import default_minilm_dir

pytestmark = pytest.mark.minilm  # the tiny encoder borrows MiniLM's vocabulary

CAPTIONS = ["a red circle left of a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def tiny_text_encoder(tmp_path_factory):
    """A one-layer, 16-wide random BERT on MiniLM's vocabulary: the real encoder class, compiled fast."""
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(directory)
    (directory / "vocab.txt").symlink_to(default_minilm_dir() / "vocab.txt")
    return BertLikeEncoder(directory, max_length=12)


class GuidedVQ(nn.Module):
    """encoder → VectorQuantizer (taming or modern face) → decoder, plus LanguageGuidance on z_q."""

    def __init__(self, text_encoder, backend: str, face: str):
        super().__init__()
        self.encoder = nn.Conv2d(3, 8, 4, stride=4)
        self.quantizer = VectorQuantizer(32, 8, dead_code_threshold=0.5, backend=backend)
        self.decoder = nn.ConvTranspose2d(8, 3, 4, stride=4)
        self.guidance = LanguageGuidance(8, 2, text_encoder, backend=backend)
        # Eager CPU runs the masked-text decoder on the masked rows only (decode_at), the
        # compiled graph on the padded batch: the same function, but dropout would draw
        # different masks for the two, so the comparison runs without it.
        for module in self.guidance.mtp.decoder.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            elif isinstance(module, nn.MultiheadAttention):
                module.dropout = 0.0
        self.face = face

    def forward(self, images, text):
        z = self.encoder(images)
        if self.face == "taming":
            z_q, vq_loss, (perplexity, _, indices) = self.quantizer(z)
        else:
            out = self.quantizer.quantize(z.movedim(1, -1))
            z_q, vq_loss, perplexity = out.z_q.movedim(-1, 1), out.loss, out.perplexity
        guided = self.guidance(z_q, text)
        loss = F.mse_loss(self.decoder(z_q), images) + vq_loss + guided.loss
        return loss, perplexity


def _step(model, images, text, call=None):
    """Loss, perplexity and parameter gradients of one step of ``call`` (default: ``model``)."""
    torch.manual_seed(1)  # the same mask draws and restart candidates in both runs
    loss, perplexity = (model if call is None else call)(images, text)
    loss.backward()
    return loss.detach(), perplexity, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _assert_compiled_matches_eager(model, images, text, **compile_args):
    eager = copy.deepcopy(model)
    expected = _step(eager, images, text)
    got = _step(model, images, text, torch.compile(model, fullgraph=True, **compile_args))
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1])
    assert got[2].keys() == expected[2].keys() and "quantizer.embedding.weight" in got[2]
    for name in expected[2]:
        torch.testing.assert_close(got[2][name], expected[2][name], rtol=1e-3, atol=1e-5, msg=name)
    for name, buffer in eager.named_buffers():  # the training-step updates ran inside the graph
        torch.testing.assert_close(model.get_buffer(name), buffer, msg=name)


@pytest.mark.parametrize(
    "backend,face",
    [("torch", "taming"), ("torch", "modern"), pytest.param("triton", "taming", marks=pytest.mark.triton)],
)
def test_guided_vq_step_compiles_without_graph_break(tiny_text_encoder, backend, face):
    torch._dynamo.reset()
    model = GuidedVQ(tiny_text_encoder, backend, face).train()
    images = torch.rand(2, 3, 8, 8)
    text = tiny_text_encoder(CAPTIONS)  # tokenised outside: a tokenizer is host code
    _assert_compiled_matches_eager(model, images, text, backend="aot_eager")


SOFTMAX_QUANTIZERS = {
    "ibq+entropy": lambda: IndexPropagationQuantize(32, 8, use_entropy_loss=True, track_usage=True),
    "lfq": lambda: LFQ(dim=8, codebook_size=256, track_usage=True),
    "vq+llamagen-entropy": lambda: VectorQuantizer(32, 8, entropy_loss_ratio=0.1, track_usage=True),
}


@pytest.mark.parametrize("name", SOFTMAX_QUANTIZERS)
def test_softmax_quantizer_step_compiles_without_graph_break(name):
    """The softmax ops' quantizers (modern face, training): eager's loss, gradients and usage."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    quantizer = SOFTMAX_QUANTIZERS[name]().train()
    eager = copy.deepcopy(quantizer)
    z = torch.randn(2, 4, 4, 8, requires_grad=True)

    def step(q, call):
        out = call(z)
        loss = out.loss + out.z_q.square().mean()
        return loss.detach(), torch.autograd.grad(loss, [z, *q.parameters()]), out.usage

    expected = step(eager, eager.quantize)
    got = step(quantizer, torch.compile(quantizer.quantize, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(got[0], expected[0])
    for value, reference in zip(got[1], expected[1]):
        torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], expected[2])


@pytest.mark.gpu
@pytest.mark.parametrize("face", ["taming", "modern"])
def test_gpu_guided_vq_step_compiles_with_inductor(tiny_text_encoder, face):
    torch._dynamo.reset()
    encoder = copy.deepcopy(tiny_text_encoder).cuda()
    model = GuidedVQ(encoder, "triton", face).cuda().train()
    images = torch.rand(2, 3, 8, 8, device="cuda")
    _assert_compiled_matches_eager(model, images, encoder(CAPTIONS))


@pytest.mark.slow
def test_residual_quantizer_step_compiles_without_graph_break():
    """ResidualQuantizer's training step (fused op, per-stage EMA and restarts) in one graph, with
    the eager step's values and buffers."""
    from lgvq.quantize import ResidualQuantizer

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = ResidualQuantizer(32, 8, 3, dead_code_threshold=0.5).train()
    compiled = copy.deepcopy(eager)
    z = torch.randn(2, 4, 4, 8)

    def step(quantizer, run):
        torch.manual_seed(1)  # the same restart draws
        out = run(z)
        return out.z_q, out.loss

    want = step(eager, eager.quantize)
    got = step(compiled, torch.compile(compiled.quantize, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(got, want)
    for name, buffer in eager.named_buffers():
        torch.testing.assert_close(compiled.get_buffer(name), buffer, msg=name)
