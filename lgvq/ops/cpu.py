"""CPU thread policy of the torch paths: blocks of work handed to single-threaded workers.

torch's intra-op parallelism (OpenMP) gives every thread one fixed share of an op and waits
for all of them at the end of the op. An op-by-op search of N = K = 16,384 runs hundreds of
such ops; when another process holds a core, each of them waits for the thread the OS has
descheduled, so the search pays that wait hundreds of times (measured under load in
``bench/results/contention-cpu.md``).

``run_blocks`` instead partitions the work once per call into blocks that persistent worker
threads pull one at a time, each running torch on one thread: a worker that is descheduled
simply takes fewer blocks, and the only wait is the end of the call. torch ops release the
GIL, so the workers run in parallel. Each block is computed the same way whichever worker
takes it, so the result does not depend on the thread count or the scheduling.

``single_threaded`` runs an op made of many small kernels, forward and backward, on one
thread: there no parallel region pays for its fork and join.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_worker = threading.local()  # .active is True inside a pool thread


def _reset_after_fork() -> None:
    """A forked child (a DataLoader worker) has none of the parent's threads: start afresh."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _start_pool(size: int) -> ThreadPoolExecutor:
    """``size`` threads that each run torch with one intra-op thread.

    ``torch.set_num_threads`` sets the calling thread's OpenMP/MKL count and the count that
    threads started later begin with; the caller's own count is put back once every worker
    has taken 1, so the rest of the process is unaffected. A thread adopts the process count
    on its first parallel op; ``get_num_threads`` triggers that first, or it would later undo
    the 1.
    """
    caller_threads = torch.get_num_threads()
    ready = threading.Barrier(size + 1)

    def init() -> None:
        torch.get_num_threads()
        torch.set_num_threads(1)
        _worker.active = True
        ready.wait()

    pool = ThreadPoolExecutor(size, thread_name_prefix="lgvq-cpu", initializer=init)
    for _ in range(size):  # each submit starts a thread: none is idle before the barrier opens
        pool.submit(int)
    ready.wait()
    torch.set_num_threads(caller_threads)
    return pool


def _workers(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = _start_pool(size), size
        return _pool


def _shared_counter(count: int) -> Callable[[], Iterator[int]]:
    """Iterators that together yield each of range(count) once, to whichever asks first."""
    lock = threading.Lock()
    source = iter(range(count))

    def blocks() -> Iterator[int]:
        while True:
            with lock:
                block = next(source, None)
            if block is None:
                return
            yield block

    return blocks


def run_blocks(work: Callable[[Iterator[int]], None], count: int) -> None:
    """Call ``work(blocks)`` on up to ``torch.get_num_threads()`` single-threaded workers.

    ``blocks`` yields block indices from ``range(count)``; all the calls together see each
    index exactly once. ``work`` sets up its own scratch buffers, then loops over its blocks,
    writing disjoint parts of shared outputs. With one thread, one block, or when called from
    a worker, it runs inline on the caller's thread with the caller's thread count.
    """
    threads = min(torch.get_num_threads(), count)
    if threads <= 1 or getattr(_worker, "active", False):
        work(iter(range(count)))
        return
    blocks = _shared_counter(count)
    pool = _workers(threads)
    futures = [pool.submit(work, blocks()) for _ in range(threads)]
    for future in futures:
        future.result()  # re-raises a worker's exception here


def _on_a_worker(fn: Callable[[], torch.Tensor | tuple]):
    """``fn()`` on a pool worker (one torch thread), unless this thread is already single-threaded.

    Switching the calling thread's count instead would cost a thread-team resize at each
    switch and at the caller's next parallel op: on a loaded machine that took longer than
    the op itself.
    """
    if torch.get_num_threads() == 1 or getattr(_worker, "active", False):
        return fn()
    return _workers(1).submit(fn).result()


class _SingleThreaded(torch.autograd.Function):
    """``fn(*inputs)`` with its forward and its backward each on one torch thread."""

    @staticmethod
    def forward(ctx, fn, *inputs):
        leaves = [t.detach().requires_grad_(need) for t, need in zip(inputs, ctx.needs_input_grad[1:])]

        def run():
            with torch.enable_grad():  # grad mode is per thread; this forward builds a graph
                return fn(*leaves)

        out = _on_a_worker(run)
        ctx.graph = (out, [t for t in leaves if t.requires_grad])
        return out.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        out, wanted = ctx.graph
        del ctx.graph  # the graph is used once
        grads = iter(_on_a_worker(lambda: torch.autograd.grad(out, wanted, grad_out, allow_unused=True)))
        return (None, *(next(grads) if need else None for need in ctx.needs_input_grad[1:]))


def single_threaded(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """``fn(*inputs)`` (one output tensor, differentiable in its tensor inputs) computed on one
    torch thread, forward and backward: on a single-threaded pool worker, or inline when the
    caller runs one thread.

    For ops made of many small kernels (a loss over (B, L, L) Grams): each kernel is too
    small to pay for an OpenMP region, and on a busy machine every region waits for a
    descheduled thread (``bench/results/contention-cpu.md`` measures relation_alignment_loss
    so). Twice differentiating it is not supported.
    Under ``torch.compile`` it is traced inline: the compiled graph, not a thread pool, then
    decides how the kernels run.
    """
    if torch.compiler.is_compiling() or torch.get_num_threads() == 1:
        return fn(*inputs)
    return _SingleThreaded.apply(fn, *inputs)
