"""The integrations without their optional packages: what to install is named, the rest of the package works.

A missing package is simulated with ``sys.modules[name] = None`` (Python's own "import blocked" marker);
``import kinetic_fm`` itself is checked in a fresh interpreter.
"""
from __future__ import annotations

import importlib
import inspect
import pydoc
import subprocess
import sys

import pytest
import torch

import kinetic_fm

DIFFUSERS_MODULE = "kinetic_fm.integrations.diffusers"


@pytest.fixture
def without_diffusers(monkeypatch):
    """diffusers blocked, our integration module and kinetic_fm's cached attribute forgotten."""
    if "KineticFlowMatchEulerScheduler" in vars(kinetic_fm):     # cached by an earlier lookup
        monkeypatch.delattr(kinetic_fm, "KineticFlowMatchEulerScheduler")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.delitem(sys.modules, DIFFUSERS_MODULE, raising=False)


def test_without_diffusers_the_scheduler_names_what_to_install(without_diffusers):
    with pytest.raises(ImportError, match=r"needs the diffusers package: pip install diffusers"):
        importlib.import_module(DIFFUSERS_MODULE)
    with pytest.raises(ImportError, match=r"pip install diffusers"):
        kinetic_fm.KineticFlowMatchEulerScheduler


def test_without_diffusers_the_package_can_still_be_listed_and_documented(without_diffusers):
    # dir(kinetic_fm) listed the scheduler, whose lookup raised ImportError: help(kinetic_fm),
    # pydoc and inspect.getmembers (all of which read every name dir() gives) failed on a base install
    assert "KineticFlowMatchEulerScheduler" not in dir(kinetic_fm)
    names = dict(inspect.getmembers(kinetic_fm))
    assert names["sample"] is kinetic_fm.sample and "KineticODESolver" in names
    assert "KineticODESolver" in pydoc.render_doc(kinetic_fm)


def test_without_flow_matching_our_solver_runs_and_the_wrapper_names_what_to_install(monkeypatch):
    from kinetic_fm.integrations import flow_matching as integration

    monkeypatch.setitem(sys.modules, "flow_matching", None)
    for name in [name for name in sys.modules if name.startswith("flow_matching.")]:   # imported already
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(integration, "_WRAPPER_CLASS", None)      # built by an earlier test, perhaps
    # KineticODESolver needs only a model(x, t): v = 1 − x from x(0) = 0 gives x(1) = 1 − e^{−1} exactly
    res = kinetic_fm.KineticODESolver(lambda x, t: 1.0 - x).sample(
        torch.zeros(2, 3, dtype=torch.float64), method="dopri5", atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(res.x, torch.full((2, 3), 1.0 - torch.e ** -1.0, dtype=torch.float64))
    with pytest.raises(ImportError, match=r"as_model_wrapper needs the flow_matching package: pip install flow_matching"):
        integration.as_model_wrapper(lambda x, t: -x)


def test_import_kinetic_fm_imports_no_optional_integration_package():
    # dir() too, which asks whether diffusers is installed without importing it
    code = ("import sys, kinetic_fm; kinetic_fm.KineticODESolver; dir(kinetic_fm); "
            "print(sorted(m for m in ('diffusers', 'flow_matching', 'torchdiffeq', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_with_diffusers_installed_the_scheduler_is_listed():
    pytest.importorskip("diffusers")
    assert "KineticFlowMatchEulerScheduler" in dir(kinetic_fm)
    assert not {"_NEEDS", "importlib"} & set(dir(kinetic_fm))


@pytest.mark.parametrize("statement, blocked, installed", [
    ("import kinetic_fm.integrations.diffusers", "huggingface_hub", "diffusers"),
    ("from kinetic_fm.integrations.flow_matching import as_model_wrapper; as_model_wrapper(abs)",
     "flow_matching.utils.model_wrapper", "flow_matching"),
])
def test_an_installed_package_that_fails_to_import_is_not_reported_missing(statement, blocked, installed):
    # diffusers present but one of its own dependencies broken: the message said "pip install diffusers",
    # which pip answers with "Requirement already satisfied"; it now quotes the error underneath
    pytest.importorskip(installed)
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            f"try:\n    {statement}\nexcept ImportError as err:\n    print(err)")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    message = out.stdout.strip()
    assert f"{installed} is installed but failed to import" in message and blocked in message, message
    assert f"needs the {installed} package" not in message
