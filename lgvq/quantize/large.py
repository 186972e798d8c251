"""Large codebooks (K = 2^16 … 2^20 codes of d = 8 … 64) in O(N + K) memory.

Two published recipes train codebooks of this size without collapse, and both are one
module here, ``ProjectedVectorQuantizer``: the codes are a learned linear map of a frozen
codebook, ``codes = C W + b``. The codebook gradient of every step moves *all* codes through
W, so codes nobody picks follow the used ones instead of dying.

* SimVQ (Zhu et al., "Addressing Representation Collapse in Vector Quantized Models with One
  Linear Layer", 2024): C (K, d) frozen at N(0, 1/d), W (d, d) — ``ProjectedVectorQuantizer(K, d)``.
  Its release uses taming's ``legacy=True`` loss weighting; this module defaults to
  ``legacy=False`` (beta on the commitment term): pass ``legacy=True`` to match.
* VQGAN-LC (Zhu et al., "Scaling the Codebook Size of VQGAN to 100,000 with a Utilization Rate
  of 99%", 2024): C the k-means centroids of pre-extracted image features (CLIP, d_c = 768),
  W a projection d_c → d initialised N(0, 1/d) — ``ProjectedVectorQuantizer.from_features``.

The projected codebook is recomputed every step (O(K·d) memory, recomputed rather than cached
because W changes every step) and quantized by ``vector_quantize``, so neither the search nor
the loss holds an N×K tensor; the gradient reaches W (and z), never C.

The plain ``VectorQuantizer`` scales the same way: ``metric="cos"`` normalises the (K, d)
codebook once per step, and its usage statistics are O(K) — a bincount of the indices, a (K,)
EMA of the counts and a (K,) step of last use. tests/quantize/test_large_codebook.py checks
forward + backward at K = 2^18, d = 8 on CPU against a memory bound below one N×K matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.quantize.kmeans import kmeans
from lgvq.quantize.vector_quantizer import VectorQuantizer

#: VectorQuantizer options that write the codes directly: meaningless for a frozen codebook.
_CODE_WRITING_OPTIONS = ("ema", "kmeans_init", "dead_code_threshold")


class ProjectedVectorQuantizer(VectorQuantizer):
    """VectorQuantizer whose codes are ``embedding_proj(embedding.weight)``: a learned linear map
    of a frozen codebook (SimVQ, VQGAN-LC; see the module docs).

    Args:
        n_e: number of codes K.
        e_dim: code dimension d (that of z).
        beta: commitment weight, as VectorQuantizer.
        legacy: VectorQuantizer's weighting switch, default False here (see the module docs).
        code_dim: dimension d_c of the frozen codebook C (default: ``codes.shape[1]``, else e_dim).
        codes: the frozen codebook C (K, d_c); default N(0, 1/d_c) entries (SimVQ's init).
        **kwargs: VectorQuantizer's keyword options (metric, track_usage, usage_window,
            sane_index_shape, backend). ``ema``, ``kmeans_init`` and ``dead_code_threshold``
            rewrite codes in place and are rejected: here codes move through W only.

    State-dict keys are SimVQ's (``embedding.weight``, ``embedding_proj.weight/bias``), so its
    checkpoints load.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        *,
        code_dim: int | None = None,
        codes: torch.Tensor | None = None,
        legacy: bool = False,
        **kwargs,
    ):
        for option in _CODE_WRITING_OPTIONS:
            if kwargs.get(option):
                raise ValueError(
                    f"ProjectedVectorQuantizer does not support {option}: its codebook is frozen "
                    "and the codes move through the learned projection only"
                )
        code_dim = _resolve_code_dim(n_e, e_dim, code_dim, codes)
        super().__init__(n_e, e_dim, beta, legacy=legacy, **kwargs)
        if code_dim != e_dim:  # the base class made a (K, e_dim) codebook; C lives in d_c
            self.embedding = nn.Embedding(n_e, code_dim)
        self.embedding.weight.requires_grad_(False)
        with torch.no_grad():
            if codes is None:
                self.embedding.weight.normal_(0.0, code_dim**-0.5)
            else:
                self.embedding.weight.copy_(codes)
        self.code_dim = code_dim
        self.embedding_proj = nn.Linear(code_dim, e_dim)

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        *,
        kmeans_iters: int = 10,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> ProjectedVectorQuantizer:
        """VQGAN-LC: C = k-means centroids (K, d_c) of ``features`` (N, d_c), e.g. pre-extracted
        CLIP image features, and the projection's weight drawn N(0, 1/e_dim) as its release does.

        The k-means runs on the fused ops (no N×K matrix) on the features' device.
        """
        check_tensor("features", features, ndim=2)
        centroids, _ = kmeans(features, n_e, kmeans_iters, generator=generator)
        quantizer = cls(n_e, e_dim, beta, codes=centroids, **kwargs)
        nn.init.normal_(quantizer.embedding_proj.weight, std=e_dim**-0.5)
        return quantizer

    @property
    def codebook(self) -> torch.Tensor:
        """The projected codes (K, e_dim), differentiable with respect to the projection."""
        return self.embedding_proj(self.embedding.weight)

    def _codebook_for_step(self) -> torch.Tensor:
        # a fresh tensor every step, so no clone is needed for in-place updates (there are none)
        return self.codebook

    def _entries(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding_proj(self.embedding(indices))  # projects only the rows asked for

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, code_dim={self.code_dim}"


def _resolve_code_dim(n_e: int, e_dim: int, code_dim: int | None, codes: torch.Tensor | None) -> int:
    """d_c from ``code_dim`` and ``codes``, validating that they agree with each other and K."""
    if codes is None:
        code_dim = e_dim if code_dim is None else code_dim
        check_positive("code_dim", code_dim)
        return code_dim
    check_tensor("codes", codes, ndim=2)
    if codes.shape[0] != n_e:
        raise ValueError(f"codes must have n_e={n_e} rows, got shape {tuple(codes.shape)}")
    if code_dim is not None and codes.shape[1] != code_dim:
        raise ValueError(f"codes has {codes.shape[1]} columns but code_dim={code_dim}")
    return codes.shape[1]
