"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the checkout (or where ``KFM_SHARED_DATA`` points);
tests that need it take the ``shared_data`` fixture and skip with a reason when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

# NumPy's and SciPy's OpenBLAS start a worker per core that busy-waits after every call (see
# kinetic_fm.gemm): with one of 2 cores busy elsewhere, tests of the studies' small covariances and
# eigenproblems ran 2 to 3 times slower than on one thread (some 10 times). One thread, as pytest_configure
# gives torch; set before torch imports NumPy, which is when OpenBLAS reads it. A value set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

_REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("KFM_SHARED_DATA")
    return Path(env) if env else _REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder not found at {path} (set KFM_SHARED_DATA to run this test)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fixed_blas(monkeypatch):
    """``fixed_blas(name)`` fixes kinetic_fm.gemm's CPU BLAS and returns the list of the BLAS that
    each later product went through, so a test can check the path it meant to take was taken."""
    from kinetic_fm import gemm

    used: list[str] = []
    real = gemm.matmul

    def spy(*args, **kwargs):
        used.append(kwargs.get("blas", "torch"))
        return real(*args, **kwargs)

    def fix(name: str) -> list[str]:
        monkeypatch.setattr(gemm, "CPU_GEMM", name)
        monkeypatch.setattr(gemm, "matmul", spy)
        return used

    return fix


@pytest.fixture
def numpy_blas_threads():
    """``numpy_blas_threads()``: the set of thread counts of the BLAS libraries kinetic_fm.gemm holds (those
    loaded when it first listed them, once per process: NumPy's and SciPy's). A library loaded later, such as
    the OpenBLAS faiss-cpu bundles (earlier tests in a run load it), is not among them. Skips where none is seen."""
    pytest.importorskip("threadpoolctl")
    from kinetic_fm import gemm

    def counts() -> set[int]:
        found = {lib["num_threads"] for lib in gemm._numpy_blas().info()}
        if not found:
            pytest.skip("threadpoolctl sees no BLAS library of NumPy's or SciPy's")
        return found

    return counts


@pytest.fixture
def second_run_refused():
    """``second_run_refused(run, recorder, expected)``: ``run()``, a second run through a
    ``PosteriorRecorder`` that holds a first run's records, is refused before its first velocity
    call, and the recorder's records and trace stay the first run's, ``expected`` (NaN, a sample
    a call skipped, compared as equal)."""
    def check(run, recorder, expected) -> None:
        calls = len(recorder)
        with pytest.raises(ValueError, match=rf"already holds {calls} records of an earlier run"):
            run()
        assert len(recorder) == calls
        for name, value in vars(recorder.trace()).items():
            assert torch.equal(value.nan_to_num(-9.0), getattr(expected, name).nan_to_num(-9.0)), name

    return check


def pytest_configure(config):
    # Tiny nets run faster on one thread, and CI's 2 cores are shared with pytest itself.
    torch.set_num_threads(1)


class TrainingInterrupted(Exception):
    """Raised by :func:`stop_at`'s callbacks: a training "killed" after a given step."""


@pytest.fixture
def stop_at():
    """``stop_at(k)``: a training callback that raises ``stop_at.error`` once step k has run
    (a kill between resume states: the steps since the last one are lost)."""
    def make(k: int):
        def callback(step, loss):
            if step == k:
                raise TrainingInterrupted
        return callback
    make.error = TrainingInterrupted
    return make



@pytest.fixture
def signal_after_state_replaced(monkeypatch):
    """``signal_after_state_replaced(step)``: SIGINT is raised in the folder's fsync right after the atomic
    rename has put the resume state of ``step`` in place (a second Ctrl-C landing after ``os.replace``)."""
    import importlib
    import signal

    checkpoint, atomic = (importlib.import_module(f"kinetic_fm.{name}")
                          for name in ("models.checkpoint", "runs.atomic"))
    real_write, real_fsync_dir = checkpoint.write_torch, atomic.fsync_dir

    def arm(step: int) -> None:
        armed = []

        def arming_write(obj, path):
            real_write(obj, path)
            if isinstance(obj, dict) and obj.get("step") == step:
                armed.append(path)

        def interrupted_fsync_dir(folder):
            real_fsync_dir(folder)
            if armed and not armed[0].exists():                      # renamed to resume.pt already
                armed.clear()
                signal.raise_signal(signal.SIGINT)

        monkeypatch.setattr(checkpoint, "write_torch", arming_write)
        monkeypatch.setattr(atomic, "fsync_dir", interrupted_fsync_dir)

    return arm


@pytest.fixture
def record_label_dropout():
    """``record_label_dropout(out, rate)``: ``train.label_dropout`` set to ``rate`` in the training run folder
    ``out``'s config.json and resume.pt's record, as the version before recorded TrainConfig's rate for a run
    without labels."""
    import json

    from kinetic_fm.models.checkpoint import load_state, save_state

    def record(out: Path, rate: float) -> None:
        written = json.loads((out / "config.json").read_text())
        written["train"]["label_dropout"] = rate
        (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
        state = load_state(out / "resume.pt")
        saved = json.loads(state["config"])
        saved["train"]["label_dropout"] = rate
        save_state({**state, "config": json.dumps(saved)}, out / "resume.pt")

    return record
