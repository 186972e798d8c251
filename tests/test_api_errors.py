"""Mistakes a new user makes with the public API: each is one line that names the argument
and says what is allowed, raised at the call, never a traceback from inside torch.

One table: (the call, the exception type, the argument it must name, what the message must
say is allowed). The calls get lazily built subjects (a quantizer, a guidance) so that the
table stays one list.
"""

from functools import cached_property

import pytest
import torch

import lgvq.ops.backend as backend_module
from lgvq.guidance import LanguageGuidance
from lgvq.ops import code_counts_and_sums, vector_quantize
from lgvq.quantize import ClusteredVectorQuantizer, VectorQuantizer

Z, CODEBOOK = torch.randn(6, 4), torch.randn(8, 4)
IDX = torch.tensor([0, 1, 2, 3, 4, 5])


class Subjects:
    @cached_property
    def text_encoder(self):
        from lgvq.text import load_text_encoder

        return load_text_encoder(max_length=8)

    @cached_property
    def guidance(self):
        return LanguageGuidance(4, 2, self.text_encoder, backend="torch")

    @cached_property
    def quantizer(self):
        return VectorQuantizer(8, 4)


@pytest.fixture(scope="module")
def subjects():
    return Subjects()


BAD_CALLS = {
    # (call, exception, argument named, what is allowed)
    "beta as a string": (lambda s: vector_quantize(Z, CODEBOOK, beta="0.25"), TypeError, "beta", "a number >= 0"),
    "beta None": (lambda s: VectorQuantizer(8, 4, beta=None), TypeError, "beta", "a number"),
    "num_codes float": (lambda s: code_counts_and_sums(Z, IDX, 16.0), TypeError, "num_codes", "an integer >= 1"),
    "num_codes None": (lambda s: code_counts_and_sums(Z, IDX, None), TypeError, "num_codes", "an integer >= 1"),
    "n_e float": (lambda s: VectorQuantizer(16.5, 8), TypeError, "n_e", "an integer >= 1"),
    "e_dim string": (lambda s: VectorQuantizer(16, "8"), TypeError, "e_dim", "an integer >= 1"),
    "n_e zero": (lambda s: VectorQuantizer(0, 8), ValueError, "n_e", "an integer >= 1"),
    "EMA eps negative": (lambda s: VectorQuantizer(8, 4, ema=True, eps=-1), ValueError, "eps", "> 0"),
    "decay string": (lambda s: VectorQuantizer(8, 4, decay="0.99"), ValueError, "decay", r"in \(0.0, 1.0\)"),
    "cvq_decay one": (lambda s: ClusteredVectorQuantizer(8, 4, cvq_decay=1.0), ValueError, "cvq_decay",
                      r"in \(0.0, 1.0\)"),
    "entry shape of wrong rank": (lambda s: s.quantizer.get_codebook_entry(IDX, (1, 6, 4)), ValueError, "shape",
                                  r"4 positive integers \(B, H, W, C\)"),
    "entry shape with C != e_dim": (lambda s: s.quantizer.get_codebook_entry(IDX, (1, 4, 3, 2)), ValueError,
                                    "shape", r"C=4\) with B·H·W = 6"),
    "triton on CPU": (lambda s: vector_quantize(Z, CODEBOOK, backend="triton"), ValueError, "backend",
                      "CUDA tensors"),
    "meta-device z_q": (lambda s: s.guidance(torch.empty(1, 4, 2, 2, device="meta"), ["a cat"]), ValueError, "z_q",
                        "same device"),
    "generator=0": (lambda s: s.guidance(torch.randn(1, 4, 2, 2), ["a cat"], generator=0), TypeError, "generator",
                    "torch.Generator or None"),
    "ras_codes of another shape": (lambda s: s.guidance(torch.randn(1, 4, 2, 2), ["a cat"],
                                                        ras_codes=torch.randn(1, 4, 2)),
                                   ValueError, "ras_codes", r"z_q's shape \(1, 4, 2, 2\)"),
    "heads not dividing code_dim": (lambda s: LanguageGuidance(4, 2, s.text_encoder, heads=3), ValueError, "heads",
                                    "divide code_dim"),
    "layers float": (lambda s: LanguageGuidance(4, 2, s.text_encoder, layers=2.0), TypeError, "layers",
                     "an integer >= 1"),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_a_bad_argument_is_one_line_naming_it_and_what_is_allowed(case, subjects, monkeypatch):
    call, error, argument, allowed = BAD_CALLS[case]
    monkeypatch.setattr(backend_module, "INTERPRET", False)  # the tests' Triton interpreter would accept CPU
    with pytest.raises(error) as raised:
        call(subjects)
    message = str(raised.value)
    assert argument in message and "\n" not in message, message
    assert raised.match(allowed)
