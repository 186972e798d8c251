"""lgvq.ops.cpu.run_blocks: every block once, on single-threaded workers, errors surfaced,
and the pooled search identical to the one-thread search."""

import multiprocessing
import threading

import pytest
import torch

from lgvq.ops.cpu import run_blocks
from lgvq.ops.nearest import score_offsets, search_torch


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def record_blocks(count):
    seen, lock = [], threading.Lock()

    def work(blocks):
        for block in blocks:
            with lock:
                seen.append((block, threading.get_ident(), torch.get_num_threads()))

    run_blocks(work, count)
    return seen


def test_every_block_exactly_once_on_one_thread_workers(two_threads):
    seen = record_blocks(37)
    assert sorted(b for b, _, _ in seen) == list(range(37))
    assert all(threads == 1 for _, _, threads in seen)  # workers never nest OpenMP regions
    assert torch.get_num_threads() == 2  # the caller keeps its own count


def test_one_thread_runs_inline():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen = record_blocks(5)
    finally:
        torch.set_num_threads(before)
    assert [b for b, _, _ in seen] == list(range(5))
    assert {ident for _, ident, _ in seen} == {threading.get_ident()}


def test_worker_error_reaches_the_caller(two_threads):
    def work(blocks):
        for block in blocks:
            if block == 3:
                raise ValueError("block 3")

    with pytest.raises(ValueError, match="block 3"):
        run_blocks(work, 8)


def _child_search(queue):
    queue.put(sorted(b for b, _, _ in record_blocks(9)))


def test_forked_child_gets_its_own_workers(two_threads):
    """A DataLoader worker is a fork: the parent's pool threads do not exist there."""
    record_blocks(4)  # the parent's pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_search, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == list(range(9))


def test_pooled_search_equals_one_thread_search(two_threads):
    """Many row and code tiles spread over workers give bit-identical scores and indices."""
    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(1000, 16, generator=g), torch.randn(300, 16, generator=g)
    offsets = score_offsets(codebook, "l2", None)
    block_bytes = 64 * 4 * 10  # 64 codes a tile (5 tiles), 10 rows a block (100 blocks)
    pooled = search_torch(x, codebook, offsets, block_bytes=block_bytes)
    torch.set_num_threads(1)
    inline = search_torch(x, codebook, offsets, block_bytes=block_bytes)
    assert torch.equal(pooled[1], inline[1]) and torch.equal(pooled[0], inline[0])
    exact = (x.double() @ codebook.double().t()).mul(-2).add(offsets.double()).argmin(dim=1)
    assert torch.equal(pooled[1], exact)


def test_single_threaded_matches_the_direct_call(two_threads):
    from lgvq.ops.cpu import single_threaded

    threads_seen = []

    def fn(a, b, c):
        threads_seen.append(torch.get_num_threads())
        h = a * b.exp()
        h.register_hook(lambda grad: threads_seen.append(torch.get_num_threads()))
        return (h.sum(1) * c).pow(2).sum()

    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g), torch.randn(5, generator=g))
    a.requires_grad_(True)
    b.requires_grad_(True)  # c needs none
    out = single_threaded(fn, a, b, c)
    out.backward()
    assert threads_seen == [1, 1]  # forward and backward on one thread
    assert torch.get_num_threads() == 2
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    ref = fn(a2, b2, c)
    ref.backward()
    assert torch.equal(out, ref.detach())
    assert torch.equal(a.grad, a2.grad) and torch.equal(b.grad, b2.grad) and c.grad is None
