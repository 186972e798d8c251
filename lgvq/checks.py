"""Input validation shared by every public entry point.

Each helper raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape, device or content) with a message that names the argument and says
what was expected, so users see the mistake at the call site rather than deep inside
a kernel.

Strict mode
-----------
Checks that read tensor *values* (NaN/Inf, index ranges, 0/1 masks) need the answer on the
host: on a GPU each one is a device→host sync that stalls the launch queue and breaks CUDA-graph
capture. The hot path (``nearest_code``, ``vector_quantize``, ``code_counts_and_sums``,
``relation_alignment_loss``, the quantizers' training step, ``LanguageGuidance.forward``) runs
them only in strict mode: ``lgvq.set_strict(True)`` or the environment variable
``LGVQ_STRICT=1`` (read at import). Shape, dtype and device checks are free and always on.
Entry points outside the hot path (evaluation metrics, decoding indices) keep their value
checks unconditionally.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Iterable

import torch

_strict = os.environ.get("LGVQ_STRICT", "0") == "1"


def set_strict(enabled: bool) -> bool:
    """Turn the hot path's value checks (NaN/Inf, ranges; each a host sync) on or off.

    Returns the previous setting, so a caller can restore it.
    """
    global _strict
    previous, _strict = _strict, bool(enabled)
    return previous


def is_strict() -> bool:
    """Whether strict mode is on (see the module docs)."""
    return _strict


@contextlib.contextmanager
def strict_mode(enabled: bool = True):
    """``set_strict(enabled)`` for the duration of a ``with`` block."""
    previous = set_strict(enabled)
    try:
        yield
    finally:
        set_strict(previous)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(
    name: str,
    t,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = FLOAT_DTYPES,
    finite: bool = True,
    nonempty: bool = True,
) -> torch.Tensor:
    """Validate one tensor argument and return it unchanged."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}"
        )
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if finite:
        check_finite(name, t)
    return t


def check_finite(name: str, t: torch.Tensor) -> None:
    """NaN/Inf check. It reads the whole tensor (and syncs on CUDA), hence ``finite=False`` opt-outs."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def check_finite_if_strict(name: str, t: torch.Tensor) -> None:
    """The hot path's NaN/Inf check: ``check_finite`` in strict mode, nothing (no sync) otherwise."""
    if _strict:
        check_finite(name, t)


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors must live on one device; return it."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on the same device, got {listed}")
    return next(iter(devices.values()))


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """A real number (not a bool, a string or None) > 0, or >= 0 with ``allow_zero``."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number {bound}, got {value!r}")
    if not (value >= 0 if allow_zero else value > 0):  # `not`: NaN fails both bounds
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_count(name: str, value, *, minimum: int = 1) -> None:
    """An integer (``int`` or numpy's, not a bool or a whole float) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_between(name: str, value, low: float, high: float) -> None:
    """A real number strictly between ``low`` and ``high`` (a decay, a probability)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < high:
        raise ValueError(f"{name} must be a number in ({low}, {high}), got {value!r}")


def check_instance(name: str, value, kind: type, what: str, *, optional: bool = False) -> None:
    """``value`` is a ``kind`` (described to the user as ``what``), or None when ``optional``."""
    if not (isinstance(value, kind) or (optional and value is None)):
        raise TypeError(f"{name} must be {what}{' or None' if optional else ''}, got {type(value).__name__}")


def check_sizes(name: str, value, length: int, what: str) -> tuple[int, ...]:
    """A sequence of ``length`` integers >= 1 (a shape such as ``what`` = "(B, H, W, C)"); returned as a tuple."""
    ok = isinstance(value, (tuple, list, torch.Size)) and len(value) == length and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value
    )
    if not ok:
        raise ValueError(f"{name} must be {length} positive integers {what}, got {value!r}")
    return tuple(int(v) for v in value)
