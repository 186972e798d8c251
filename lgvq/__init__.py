"""lgvq: Triton-fused vector quantization and LG-VQ language-guided codebook learning."""

__version__ = "0.1.0"

__all__ = ["is_strict", "set_strict"]

from lgvq import moved as _moved

_moved.install()  # the old import paths (lgvq.train, lgvq.config, ...) for one release


def __getattr__(name: str):
    """``lgvq.set_strict`` / ``lgvq.is_strict`` (see ``lgvq.checks``), imported on first use so
    that ``import lgvq`` stays free of torch (the CLI parses its arguments before loading it)."""
    if name in __all__:
        from lgvq import checks

        return getattr(checks, name)
    raise AttributeError(f"module 'lgvq' has no attribute {name!r}")
