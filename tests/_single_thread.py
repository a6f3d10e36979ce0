"""Autouse fixture for tests of tiny networks: run torch ops on one intra-op thread.

On a busy 2-core machine, intra-op threads of such small ops cost far more than they gain
(measured ~10x slower with 2 threads). Import it into a test module to activate it:
``from _single_thread import single_thread  # noqa: F401``.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
