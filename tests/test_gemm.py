"""kinetic_fm.gemm: float32 CPU products through torch's or NumPy's BLAS."""
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


def test_numpy_products_leave_numpy_blas_threads_as_they_were():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pytest.importorskip("numpy")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    gemm.matmul(torch.randn(4, 8), torch.randn(8, 300), blas="numpy")   # single-threaded calls inside
    assert blas_threads() == before


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
