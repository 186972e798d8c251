"""Triton's CPU interpreter on stacks where it needs a fix to run lgvq's kernels.

Triton before 3.7 turns a scalar tensor into a Python int with ``int()`` on its one-element
array: the bound of every ``range`` over a runtime value (the code-tile loops) goes through it.
numpy 2.4 made ``int()`` of an array with a dimension an error, and pip cannot express "numpy
< 2.4 only with triton < 3.7" (a numpy ceiling would hold back every newer stack; a triton
floor conflicts with the exact triton pin of torch <= 2.11). Triton 3.7 squeezes the array
first; :func:`backport_scalar_index` gives the older interpreter that same one-line change.
Compiled (GPU) kernels never run the interpreter, so nothing here touches them.
"""

import importlib.metadata
import re


def _release(package: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", importlib.metadata.version(package)).groups()
    return int(major), int(minor)


def needs_scalar_index_backport() -> bool:
    """True for triton < 3.7 with numpy >= 2.4, where the interpreter's ``int()`` fails."""
    return _release("triton") < (3, 7) and _release("numpy") >= (2, 4)


def backport_scalar_index() -> None:
    """Make the interpreter's scalar-to-int conversion squeeze the array first (triton 3.7's fix).

    The interpreter patches ``triton.language.tensor`` afresh for every launch
    (``_patch_lang_tensor``, undone after it); this wraps that patch so that ``__index__``
    reads the single element of any shape. Idempotent; nothing is imported or changed
    unless :func:`needs_scalar_index_backport`.
    """
    if not needs_scalar_index_backport():
        return
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor
    if getattr(patch_tensor, "lgvq_backport", False):
        return

    def _patch_lang_tensor(tensor, *scope):
        patch_tensor(tensor, *scope)
        set_attr = scope[0].set_attr if scope else setattr  # older interpreters patch without a scope
        set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    _patch_lang_tensor.lgvq_backport = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
