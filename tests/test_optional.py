"""Every optional package, missing or broken, at each place that imports it: one wording.

Missing is simulated two ways: ``sys.modules[name] = None`` (Python's "import blocked" marker) and
a meta-path finder that refuses the name with ModuleNotFoundError. Broken (installed, but failing
to import) is a finder whose loader raises while the package loads: a RuntimeError of its own, or
a ModuleNotFoundError for a dependency of its own. The package's real modules are taken out of
``sys.modules`` for the test and put back after it.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

import pytest
import torch

import kinetic_fm


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers for ``package`` and its submodules: refuses them (``error`` None), or finds them
    with a loader that raises ``error`` while the module loads."""

    def __init__(self, package: str, error: BaseException | None):
        self.package, self.error = package, error

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] != self.package:
            return None
        if self.error is None:
            raise ModuleNotFoundError(f"No module named {fullname!r} (refused by the test's finder)", name=fullname)
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.error


MODES = {
    "blocked": None,
    "refused": None,
    "raises while loading": RuntimeError("boom while loading"),
    "lacks a dependency of its own": ModuleNotFoundError("No module named '_its_dependency'", name="_its_dependency"),
}


def _take_out(monkeypatch, package: str, mode: str) -> None:
    """``package`` (and its submodules) made missing or broken as ``mode`` says, until the test ends."""
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    if mode == "blocked":
        monkeypatch.setitem(sys.modules, package, None)
    else:
        monkeypatch.setattr(sys, "meta_path", [_Finder(package, MODES[mode]), *sys.meta_path])


def _nearest_with_faiss():
    from kinetic_fm.knn import nearest_neighbors

    nearest_neighbors(torch.zeros(2, 3), torch.ones(4, 3), k=1, backend="faiss")


def _clip_scorer(tmp_path):
    from kinetic_fm.metrics.semantics import CLIPScorer

    (tmp_path / "config.json").write_text("{}")
    CLIPScorer(tmp_path)


def _diffusers_scheduler(monkeypatch):
    if "KineticFlowMatchEulerScheduler" in vars(kinetic_fm):  # cached by an earlier lookup
        monkeypatch.delattr(kinetic_fm, "KineticFlowMatchEulerScheduler")
    monkeypatch.delitem(sys.modules, "kinetic_fm.integrations.diffusers", raising=False)
    kinetic_fm.KineticFlowMatchEulerScheduler


def _model_wrapper(monkeypatch):
    from kinetic_fm.integrations import flow_matching as integration

    monkeypatch.setattr(integration, "_WRAPPER_CLASS", None)  # built by an earlier test, perhaps
    integration.as_model_wrapper(lambda x, t: -x)


def _inception(tmp_path, monkeypatch, other_backend: str):
    from kinetic_fm.metrics.fidelity import inception_feature_space

    monkeypatch.setitem(sys.modules, other_backend, None)  # absent: the one under test is the one used
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    inception_feature_space(weights)


def _digits():
    from kinetic_fm.data import load_digits

    load_digits(n=4)


# (package, what to pip install, the extra, the user the message names, how to reach it)
SITES = [
    ("faiss", "faiss-cpu", "faiss", "backend='faiss'", lambda tmp_path, mp: _nearest_with_faiss()),
    ("transformers", "transformers", "clip", "CLIPScorer", lambda tmp_path, mp: _clip_scorer(tmp_path)),
    ("diffusers", "diffusers", "diffusers", "kinetic_fm.integrations.diffusers",
     lambda tmp_path, mp: _diffusers_scheduler(mp)),
    ("flow_matching", "flow_matching", "flow_matching", "as_model_wrapper", lambda tmp_path, mp: _model_wrapper(mp)),
    ("torch_fidelity", "torch-fidelity", None, "inception_feature_space",
     lambda tmp_path, mp: _inception(tmp_path, mp, "torchvision")),
    ("torchvision", "torchvision", None, "inception_feature_space",
     lambda tmp_path, mp: _inception(tmp_path, mp, "torch_fidelity")),
    ("sklearn", "scikit-learn", None, "load_digits", lambda tmp_path, mp: _digits()),
]


@pytest.mark.parametrize("mode", ["blocked", "refused"])
@pytest.mark.parametrize("package, dist, extra, user, reach", SITES, ids=[site[0] for site in SITES])
def test_a_missing_package_is_named_with_what_to_install(tmp_path, monkeypatch, mode, package, dist, extra, user,
                                                         reach):
    _take_out(monkeypatch, package, mode)
    with pytest.raises(ImportError) as caught:
        reach(tmp_path, monkeypatch)
    message = str(caught.value)
    if package in ("torch_fidelity", "torchvision"):   # either backend serves: both are named
        assert message == ("inception_feature_space needs the torch-fidelity package (the standard FID network: "
                           "pip install torch-fidelity) or the torchvision package (pip install torchvision)")
        return
    with_extra = f" (or pip install kinetic_fm[{extra}])" if extra else ""
    assert message == f"{user} needs the {dist} package: pip install {dist}{with_extra}"


@pytest.mark.parametrize("mode", ["raises while loading", "lacks a dependency of its own"])
@pytest.mark.parametrize("package, dist, extra, user, reach", SITES, ids=[site[0] for site in SITES])
def test_an_installed_package_that_fails_to_import_is_quoted_not_reported_missing(
        tmp_path, monkeypatch, mode, package, dist, extra, user, reach):
    # a RuntimeError while loading escaped as itself (or, for torch-fidelity, sent FID to torchvision's
    # network without a word); a missing dependency of its own read "pip install <package>", which
    # pip answers with "Requirement already satisfied"
    _take_out(monkeypatch, package, mode)
    with pytest.raises(ImportError) as caught:
        reach(tmp_path, monkeypatch)
    message, error = str(caught.value), MODES[mode]
    assert message.startswith(f"{user}: {dist} is installed but failed to import "
                              f"({type(error).__name__}: {error}); upgrade or reinstall it "
                              f"(pip install -U {dist})"), message
    assert "needs the" not in message
    assert caught.value.__cause__ is error   # the original, with its traceback, underneath


def test_the_cli_names_the_flag_and_tells_a_broken_faiss_from_a_missing_one(tmp_path, monkeypatch, capsys):
    import numpy as np

    from kinetic_fm.cli import main

    np.save(tmp_path / "s.npy", np.zeros((3, 2), dtype=np.float32))
    np.save(tmp_path / "t.npy", np.ones((5, 2), dtype=np.float32))
    _take_out(monkeypatch, "faiss", "raises while loading")
    assert main(["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "t.npy"),
                 "--backend", "faiss", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kfm memorization: error: --backend faiss: faiss-cpu is installed but failed to import "
                          "(RuntimeError: boom while loading)"), err



@pytest.mark.parametrize("mode", ["blocked", "raises while loading"])
def test_kfm_sample_backend_faiss_words_its_failure_as_kfm_memorization_does(tmp_path, monkeypatch, capsys, mode):
    import numpy as np

    from kinetic_fm.cli import main

    np.save(tmp_path / "t.npy", np.ones((5, 2), dtype=np.float32))
    _take_out(monkeypatch, "faiss", mode)
    assert main(["sample", "--field", "empirical", "--train", str(tmp_path / "t.npy"), "--truncate", "2",
                 "--backend", "faiss", "--n", "2", "--steps", "2", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    expected = ("--backend faiss needs the faiss-cpu package" if mode == "blocked"
                else "--backend faiss: faiss-cpu is installed but failed to import (RuntimeError: boom while loading)")
    assert err.startswith(f"kfm sample: error: {expected}"), err
    assert not (tmp_path / "run").exists()

def test_the_old_home_of_the_helpers_still_serves():
    from kinetic_fm import integrations, optional

    assert integrations.import_failure is optional.import_failure and integrations.installed is optional.installed


def test_a_name_an_installed_release_lacks_is_an_import_failure_not_an_attribute_error(monkeypatch):
    import types

    from kinetic_fm.optional import optional_names

    monkeypatch.setitem(sys.modules, "diffusers", types.ModuleType("diffusers"))   # a release without the class
    with pytest.raises(ImportError, match=r"^kfm-test: diffusers is installed but failed to import \(ImportError: "
                                          r"cannot import name 'FlowMatchEulerDiscreteScheduler' from 'diffusers'\)"):
        optional_names("diffusers", "kfm-test", "FlowMatchEulerDiscreteScheduler")


def test_import_kinetic_fm_imports_only_the_standard_library_for_the_helpers():
    import subprocess

    code = ("import sys, kinetic_fm; dir(kinetic_fm); import kinetic_fm.optional; "
            "print(sorted(m for m in ('faiss', 'transformers', 'sklearn', 'torchvision', 'torch_fidelity') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_the_runs_package_loads_its_names_on_first_use_so_a_lock_loads_no_pyarrow():
    # kinetic_fm/runs/__init__.py imported every module, so locking a folder, writing a file atomically or reading a
    # manifest loaded pyarrow (0.2-0.4 s, and a dependency) through runs.shards and runs.runner (helper-295)
    import subprocess

    import kinetic_fm.runs as runs

    public = {"Coordinator", "IncompleteRunError", "ResumeMismatchError", "RunLock", "RunLockedError", "RunManifest",
              "RunOutcome", "ShardPlan", "World", "fingerprint", "inspect_shard", "merge_shards", "prepare_run_dir",
              "profile_from_table", "read_manifest", "read_profile", "read_run", "read_samples", "run_sharded",
              "sha256_file", "world_session"}
    assert set(runs.__all__) == public and public <= set(dir(runs))
    for name in runs.__all__:   # each, the object its own module defines
        value = getattr(runs, name)
        assert value.__module__.startswith("kinetic_fm.runs.") and getattr(sys.modules[value.__module__], name) is value
    star: dict = {}
    exec("from kinetic_fm.runs import *", star)
    assert public <= set(star)
    with pytest.raises(AttributeError, match="^module 'kinetic_fm.runs' has no attribute 'read_runs'$"):
        runs.read_runs

    light = ("kinetic_fm.runs", "kinetic_fm.runs.lock", "kinetic_fm.runs.atomic", "kinetic_fm.runs.plan",
             "kinetic_fm.runs.distributed", "kinetic_fm.runs.manifest")
    code = (f"import importlib, sys\nfor name in {light!r}:\n    importlib.import_module(name)\n"
            "    print(name, 'pyarrow' in sys.modules)\n"
            "from kinetic_fm.runs import read_run\nprint('read_run', 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.splitlines() == [f"{name} False" for name in light] + ["read_run True"]


def test_a_run_folder_s_manifest_is_looked_for_without_loading_pyarrow(tmp_path):
    # the name had its home in kinetic_fm.runs.manifest, whose package loads pyarrow: kfm sample and kfm train
    # spelt "manifest.json" out beside it, and --train's folder check (image_folder_given) loaded pyarrow for it
    import subprocess

    from kinetic_fm import run_files
    from kinetic_fm.runs import manifest

    assert manifest.MANIFEST_NAME is run_files.MANIFEST_NAME == "manifest.json"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    code = ("import sys; import kinetic_fm.commands.sample; "
            "from kinetic_fm.commands._rows import image_folder_given; "
            "from kinetic_fm.models.train import check_train_dir\n"
            f"run = {str(tmp_path / 'run')!r}\n"
            "assert not image_folder_given(run)\n"
            "try:\n    check_train_dir(run, resume=False)\nexcept ValueError as err:\n    print(err)\n"
            "print('pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.splitlines() == [f"{tmp_path / 'run'} holds a kfm sample run (manifest.json), not a training "
                                       "run; choose another folder", "False"]


def test_dir_of_the_front_door_and_of_runs_shows_their_names_not_their_own_tools():
    # runs listed the Any and lazy_attribute its __init__ imports; kinetic_fm listed result_repr, a module of its
    # workings (loaded by every result's module), while it hid lazy
    import kinetic_fm
    import kinetic_fm.result_repr  # noqa: F401  (loaded, as any result's module loads it)
    import kinetic_fm.runs as runs

    for package, public in ((kinetic_fm, {"sample", "KTS", "memorization", "time_grid", "runs", "sampling"}),
                            (runs, set(runs.__all__))):
        shown = set(dir(package))
        assert public <= shown, public - shown
        assert not shown & {"Any", "annotations", "importlib", "lazy", "lazy_attribute", "result_repr"}, shown
