"""Optional dependencies. ``pip install lgvq`` is the quantization engine alone (torch, numpy,
safetensors); language guidance, training, the downstream tasks and FID each need an extra
(setup.py). A module that needs one imports it under ``needs_extra``, so that a missing package
stops with one line that names the extra to install instead of a bare ``No module named``."""

from __future__ import annotations

import contextlib


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that brings it."""


@contextlib.contextmanager
def needs_extra(extra: str):
    """Turn a ModuleNotFoundError raised in the block into one naming ``extra``.

        with needs_extra("train"):
            import yaml
    """
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as err:
        raise MissingExtraError(
            f"{err.name} is not installed; it comes with lgvq's '{extra}' extra: pip install 'lgvq[{extra}]'",
            name=err.name,
        ) from None
