"""What a text encoder's cached features depend on, as one digest.

A cached feature may be served only where a fresh encode would give the same bits, so the
digest covers the weights (every byte), the model's config, the tokenizer's vocabulary and
settings, the encoder's length and mask token, the rule that shapes its model runs, and the
device, dtype and torch build that execute them (kernels differ in rounding between CPU
instruction sets and between torch versions).
"""

from __future__ import annotations

import hashlib
import itertools
import json

import torch
from torch import nn

#: Bumped when the way features are computed or stored changes.
FEATURES_FORMAT = "lgvq-text-features/1"


def weights_state(model: nn.Module) -> tuple:
    """A cheap witness of the weights: each tensor's address, in-place version counter, dtype
    and device. It changes when a weight is replaced, moved, cast or written in place
    (``load_state_dict`` copies in place), so the full digest is recomputed only then."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def _tokenizer_settings(tokenizer) -> str:
    """Everything the tokenizer maps text with: a fast tokenizer's full serialisation
    (normaliser, pre-tokeniser, vocabulary, merges), else its vocabulary, merges and options."""
    parts = [type(tokenizer).__name__, tokenizer.padding_side, tokenizer.truncation_side,
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)]
    if getattr(tokenizer, "is_fast", False):
        parts.append(tokenizer.backend_tokenizer.to_str())
    else:
        parts.append(json.dumps(tokenizer.get_vocab(), sort_keys=True))
        parts.append(json.dumps(sorted(getattr(tokenizer, "bpe_ranks", {}).items()), default=str))
        options = {k: v for k, v in tokenizer.init_kwargs.items() if isinstance(v, (bool, int, float, str))}
        parts.append(json.dumps(options, sort_keys=True))
    return "\n".join(parts)


def _device_build(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)} {torch.version.cuda}"
    return f"{device.type} {torch.backends.cpu.get_cpu_capability()}"


def encoder_fingerprint(encoder, recipe: tuple) -> str:
    """sha256 hex digest of what ``encoder``'s features depend on (see the module docstring);
    ``recipe`` is the rule that shapes its model runs (chunk rows, length step)."""
    digest = hashlib.sha256()
    header = {
        "format": FEATURES_FORMAT,
        "encoder": type(encoder).__name__,
        "recipe": list(recipe),
        "max_length": encoder.max_length,
        "mask_token_id": encoder.mask_token_id,
        "sentence_dim": encoder.sentence_dim,
        "torch": torch.__version__,
        "device": _device_build(encoder.device),
        "config": encoder.model.config.to_dict(),
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(_tokenizer_settings(encoder.tokenizer).encode())
    for name, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
