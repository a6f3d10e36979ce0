"""kinetic_fm.gemm: float32 CPU products through torch's or NumPy's BLAS."""
import threading

import pytest
import torch

from kinetic_fm import gemm


@pytest.mark.parametrize("blas", gemm.BLAS)
def test_matmul_matches_float64_product_into_strided_out(blas):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 50, generator=g), torch.randn(61, 50, generator=g)
    want = a.double() @ b.double().T
    got = gemm.matmul(a, b.T, blas=blas)                            # a transposed operand
    assert got.shape == (37, 61) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    buffer = torch.full((37, 80), -7.0)
    out = gemm.matmul(a, b.T, out=buffer[:, 10:71], blas=blas)     # a column slice: row stride 80
    assert out.data_ptr() == buffer[:, 10:71].data_ptr()
    torch.testing.assert_close(buffer[:, 10:71].double(), want, rtol=0, atol=1e-4)
    assert (buffer[:, :10] == -7).all() and (buffer[:, 71:] == -7).all()


def test_choose_keeps_torch_for_float64_and_small_work(monkeypatch):
    def timing_would_run(threads):
        raise AssertionError("small work must not trigger the BLAS timing")

    monkeypatch.setattr(gemm, "_calibrated", timing_would_run)
    cpu = torch.device("cpu")
    assert gemm.choose(torch.float32, cpu, flops=1e6, worth=1e9) == "torch"
    monkeypatch.setattr(gemm, "CPU_GEMM", "numpy")
    assert gemm.choose(torch.float32, cpu, flops=1e6, worth=1e9) == "numpy"    # a fixed choice is obeyed
    assert gemm.choose(torch.float64, cpu, flops=1e12, worth=1e9) == "torch"   # NumPy only for float32


def test_cpu_gemm_choice_is_named_and_validated(monkeypatch):
    assert gemm.cpu_gemm() in gemm.BLAS                   # the timed choice on this machine
    monkeypatch.setattr(gemm, "CPU_GEMM", "mkl")
    with pytest.raises(ValueError, match="CPU_GEMM must be 'auto', 'torch' or 'numpy'"):
        gemm.cpu_gemm()


@pytest.mark.parametrize("threads,n", [(1, 70), (2, 5), (2, 130), (3, 130), (4, 1000)])
def test_numpy_products_split_over_threads_cover_every_column(threads, n, monkeypatch):
    # each thread takes a whole number of 64-column parts; the last part may be short or absent
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(9, 33, generator=g), torch.randn(33, n, generator=g)
    out = torch.full((9, n), float("nan"))
    gemm.matmul(a, b, out=out, blas="numpy")
    torch.testing.assert_close(out.double(), a.double() @ b.double(), rtol=0, atol=1e-4)


def test_numpy_products_leave_numpy_blas_threads_as_they_were(blas_at_two_threads, numpy_blas_threads):
    # at two threads (conftest's one would hide a product that leaves them at one)
    gemm.matmul(torch.randn(4, 8), torch.randn(8, 300), blas="numpy")   # single-threaded calls inside
    assert numpy_blas_threads() == {2}


def _product_in_child(queue):
    a, b = torch.ones(3, 4), torch.ones(4, 200)
    queue.put(gemm.matmul(a, b, blas="numpy").sum().item())


def test_numpy_products_work_in_a_forked_child(monkeypatch):
    # the parent's worker pool exists before the fork; the child must not submit work to it
    import multiprocessing

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    gemm.matmul(torch.ones(3, 4), torch.ones(4, 200), blas="numpy")    # creates the parent's pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_product_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("a numpy-BLAS product hung in a forked child")
    assert queue.get(timeout=5) == 3 * 200 * 4.0


@pytest.fixture
def blas_at_two_threads(numpy_blas_threads):
    """NumPy's and SciPy's BLAS, and torch, raised to 2 threads for the test: conftest's
    OPENBLAS_NUM_THREADS=1 (and torch's one thread) would hide a limit that does nothing or too much."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pytest.importorskip("scipy.linalg")                   # loads SciPy's OpenBLAS beside NumPy's
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
            assert numpy_blas_threads() == {2}
            yield
    finally:
        torch.set_num_threads(torch_threads)


def test_one_numpy_blas_thread_inside_torch_threads_untouched_limits_back_after(blas_at_two_threads, monkeypatch,
                                                                                 numpy_blas_threads):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with gemm.numpy_blas_single_threaded(unless_user_set=True):
        assert numpy_blas_threads() == {1}
        assert torch.get_num_threads() == 2
        out = gemm.matmul(torch.ones(3, 4), torch.ones(4, 200), blas="numpy")   # its own limit nests inside
        assert (out == 4).all() and numpy_blas_threads() == {1}
    assert numpy_blas_threads() == {2}
    for stop in (KeyboardInterrupt, RuntimeError):                        # an interrupted scope restores too
        with pytest.raises(stop), gemm.numpy_blas_single_threaded():
            assert numpy_blas_threads() == {1}
            raise stop
        assert numpy_blas_threads() == {2}


def test_overlapping_holds_from_two_threads_give_the_limits_back_after_the_last(blas_at_two_threads,
                                                                              numpy_blas_threads):
    # A enters, B enters, A exits, B exits, on two threads other than the one that raised the limit: not
    # nested, so B must not restore the one thread it found, and neither may be ignored by threadpoolctl
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def hold_a():
        with gemm.numpy_blas_single_threaded():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def hold_b():
        a_in.wait(10)
        with gemm.numpy_blas_single_threaded():
            b_in.set()
            a_out.wait(10)
            seen["inside B after A left"] = numpy_blas_threads()

    threads = [threading.Thread(target=hold_a), threading.Thread(target=hold_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert a_out.is_set() and seen["inside B after A left"] == {1}
    assert numpy_blas_threads() == {2}


def test_user_set_openblas_threads_win_where_asked(blas_at_two_threads, monkeypatch, numpy_blas_threads):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with gemm.numpy_blas_single_threaded(unless_user_set=True):
        assert numpy_blas_threads() == {2}
    with gemm.numpy_blas_single_threaded():                                # NumPy's own products: always one
        assert numpy_blas_threads() == {1}


def test_one_numpy_blas_thread_reaches_scipy_loaded_after_the_first_product():
    # the libraries are listed once per process: SciPy's OpenBLAS must be among them even when SciPy
    # was imported after the first NumPy product (the studies import it late)
    pytest.importorskip("threadpoolctl")
    code = (
        "import torch\n"
        "from kinetic_fm import gemm\n"
        "gemm.matmul(torch.ones(3, 4), torch.ones(4, 200), blas='numpy')\n"
        "import scipy.linalg\n"
        "from threadpoolctl import threadpool_info, threadpool_limits\n"
        "with threadpool_limits(limits=2, user_api='blas'), gemm.numpy_blas_single_threaded():\n"
        "    print(sorted((p['filepath'], p['num_threads']) for p in threadpool_info() if p['user_api'] == 'blas'))\n"
    )
    import ast
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    libraries = ast.literal_eval(result.stdout)
    assert {threads for _, threads in libraries} == {1}, libraries      # pip wheels: NumPy's and SciPy's own
