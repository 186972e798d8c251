"""lgvq.threads: the cores split between parallel processes, and the load description."""

import pytest

import lgvq.threads as threads


@pytest.mark.parametrize("cores, processes, expected", [(2, 2, 1), (16, 2, 8), (1, 2, 1), (3, 2, 1), (8, 1, 8)])
def test_threads_per_process_splits_the_cores(monkeypatch, cores, processes, expected):
    monkeypatch.setattr(threads, "cpu_cores", lambda: cores)
    assert threads.threads_per_process(processes) == expected


def test_load_describes_what_was_measured(monkeypatch):
    monkeypatch.setattr(threads, "cpu_cores", lambda: 2)
    assert threads.Load(1.234, 3.21, 10.0).describe() == "other processes used 1.2 of 2 cores, load average 3.2"
    assert threads.Load(None, None, 1.0).describe() == "machine load unknown"

