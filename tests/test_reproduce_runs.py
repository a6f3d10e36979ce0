"""``kfm reproduce`` as a command: runs of some studies into a finished run's folder, the nets a run
trains, what it says while it runs (the tiny preset, one run shared by the module's tests)."""
import re
import shutil

import pandas as pd
import pytest

from kinetic_fm.studies.config import ReproduceConfig


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run of every study (its folder and report.md)."""
    from kinetic_fm.studies.reproduce import reproduce

    out = tmp_path_factory.mktemp("finished")
    md, _ = reproduce(ReproduceConfig.preset("tiny"), out, progress=False)
    return out, md.read_text(encoding="utf-8")


def _claims(report: str) -> int:
    return int(re.search(r"(\d+) claims", report).group(1))


def _measured(monkeypatch) -> list[str]:
    from kinetic_fm.studies import reproduce as module

    measured = []
    for name in module.STUDIES:
        run = getattr(module, f"run_{name}")
        monkeypatch.setattr(module, f"run_{name}",
                            lambda *a, _name=name, _run=run, **kw: measured.append(_name) or _run(*a, **kw))
    return measured


def test_a_run_of_some_studies_keeps_the_others_finished_results_in_the_folder_and_the_report(
        finished, tmp_path, monkeypatch, capsys):
    # `--studies support` into a full run's folder deleted the other studies' tables and figures without a
    # word, and its report said "2 claims": the others' results, finished at these settings, are shown as kept
    from kinetic_fm.studies.reproduce import reproduce

    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    figures = {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")}
    tables = sorted(p.name for p in (out / "tables").glob("*.parquet"))
    measured = _measured(monkeypatch)
    md, _ = reproduce(ReproduceConfig.preset("tiny"), out, studies=("support",), progress=True)
    report = md.read_text(encoding="utf-8")
    assert measured == []                                   # support too: its entry of the full run
    assert _claims(report) == _claims(finished[1])
    assert {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")} == figures
    assert sorted(p.name for p in (out / "tables").glob("*.parquet")) == tables
    for name in tables:
        pd.testing.assert_frame_equal(pd.read_parquet(out / "tables" / name),
                                      pd.read_parquet(finished[0] / "tables" / name), check_exact=True)
    assert "**What ran.** Studies support on" in report
    assert "Also shown, not run now (`--studies support`): semantics, memorization, shaping" in report
    said = capsys.readouterr().out
    for name in ("semantics", "memorization", "shaping"):
        assert f"[kfm reproduce] study: {name}, not run now: its result from an earlier run" in said


def test_a_run_of_some_studies_says_which_studies_results_it_removes(finished, tmp_path, capsys):
    # the others' results of other settings (here: their entries gone) disagree with the report: they go, said
    from kinetic_fm.studies.reproduce import reproduce

    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    for name in ("semantics", "shaping"):
        for entry in (out / "cache").glob(f"study-{name}-*.pt"):
            entry.unlink()
    md, _ = reproduce(ReproduceConfig.preset("tiny"), out, studies=("support",), progress=True)
    assert {p.stem.split("__")[0] for p in (out / "tables").glob("*.parquet")} == {"support", "memorization"}
    said = capsys.readouterr().out
    assert ("[kfm reproduce] removing the tables and figures of semantics, shaping from an earlier run: this folder "
            "holds no finished result of theirs for these settings") in said


def test_a_run_trains_only_the_nets_its_studies_read_and_a_study_is_keyed_on_those_alone(finished, tmp_path,
                                                                                        monkeypatch):
    # `--studies semantics,support` trained the memorizing net, which only memorization and shaping read; and a
    # study's entry keyed on a net it never reads would not be found once a later run trained that net
    from kinetic_fm.studies.reproduce import reproduce

    out = tmp_path / "out"
    shutil.copytree(finished[0] / "models", out / "models")
    for memorizer in (out / "models").glob("memorizer-*"):
        shutil.rmtree(memorizer)
    cfg = ReproduceConfig.preset("tiny")
    reproduce(cfg, out, studies=("semantics",), progress=False)
    assert not list((out / "models").glob("memorizer-*"))
    measured = _measured(monkeypatch)
    md, _ = reproduce(cfg, out, studies=("shaping",), progress=False)        # trains the memorizer
    assert measured == ["shaping"] and list((out / "models").glob("memorizer-*/final.safetensors"))
    assert "Also shown, not run now (`--studies shaping`): semantics" in md.read_text(encoding="utf-8")


def _trained(finished, folder):
    """A new workspace ``folder`` holding the finished run's nets and judge, nothing sampled."""
    shutil.copytree(finished[0] / "models", folder / "models")
    (folder / "cache").mkdir()
    for judge in (finished[0] / "cache").glob("classifier-*.pt"):
        shutil.copy2(judge, folder / "cache" / judge.name)
    return folder


def test_a_rerun_after_an_interruption_says_how_many_finished_stages_it_reuses(finished, tmp_path, monkeypatch,
                                                                               capsys):
    # the rerun said nothing of resuming: it read as a fresh start until its first study went by in a second
    from kinetic_fm.studies import reproduce as module

    out = _trained(finished, tmp_path / "out")
    cfg = ReproduceConfig.preset("tiny")
    module.reproduce(cfg, out, studies=("support",), progress=False)        # a finished run at other settings
    earlier = {p.name for p in (out / "cache").glob("*.pt")}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption in the last study")

    with monkeypatch.context() as patch:
        patch.setattr(module, "run_shaping", killed)
        with pytest.raises(KeyboardInterrupt):
            module.reproduce(cfg, out, progress=False)
    # the stages the interrupted run computed, and support's result, which it read from its entry of the earlier run
    finished_now = len({p.name for p in (out / "cache").glob("*.pt")} - earlier) + 1
    capsys.readouterr()
    module.reproduce(cfg, out, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[kfm reproduce] resuming: {finished_now} finished stages in {out / 'cache'} are reused"
    module.reproduce(cfg, out, progress=True)                                 # a rerun of the finished run: no word
    assert not any("resuming" in line for line in capsys.readouterr().out.splitlines())


def test_a_folder_of_the_users_files_is_refused_and_a_workspace_or_an_empty_one_is_not(tmp_path, capsys):
    # any folder was taken: a user's report.md in it was overwritten without a word, their other files kept
    from kinetic_fm.cli import main
    from kinetic_fm.studies.reproduce import reproduce

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "report.md").write_text("my own report")
    (notes / "data.csv").write_text("1,2")
    assert main(["reproduce", "--tiny", "--out", str(notes)]) == 2
    assert capsys.readouterr().err == (
        f"kfm reproduce: error: --out {notes} is not empty and holds no kfm reproduce run (it holds data.csv, "
        "report.md): the run would write its report, tables and figures among them; choose a new or empty folder, "
        "or one kfm reproduce wrote\n(see 'kfm reproduce --help')\n")
    with pytest.raises(ValueError, match=r"is not empty and holds no kfm reproduce run \(it holds data.csv"):
        reproduce(ReproduceConfig.preset("tiny"), notes, progress=False)
    assert sorted(p.name for p in notes.iterdir()) == ["data.csv", "report.md"]
    assert (notes / "report.md").read_text() == "my own report"

    from kinetic_fm.studies.reproduce import foreign_folder_problem

    for name in ("empty", "leftovers", "workspace", "older"):
        (tmp_path / name).mkdir()
    (tmp_path / "leftovers" / ".lock").write_text("")
    (tmp_path / "leftovers" / ".report.md.tmp-7-ab").write_text("half")
    (tmp_path / "workspace" / "timings.json").write_text("{}")
    (tmp_path / "workspace" / "my_notes.txt").write_text("a user's file in a run folder is kept")
    (tmp_path / "older" / "cache").mkdir()                 # a workspace from before timings.json
    (tmp_path / "nets" / "models").mkdir(parents=True)     # a workspace's trained nets, copied in to be reused
    for name in ("empty", "leftovers", "workspace", "older", "nets", "new"):
        assert foreign_folder_problem(tmp_path / name) is None, name


@pytest.mark.parametrize("progress", [True, False])
def test_the_goldilocks_resamples_show_a_bar_that_counts_each_one_unless_quiet(tmp_path, monkeypatch, progress):
    # "memorization: Goldilocks controls, permutation test and bootstrap (200 resamples)" was followed by half a
    # minute of silence: the control's resamples, the permutations and the paired resamples, each `resamples` long
    import tqdm.auto

    from kinetic_fm.studies import memorization as M
    from kinetic_fm.studies.output import StudyOutput
    from kinetic_fm.studies.workspace import Workspace
    from test_report_intervals import _goldilocks_case

    bars = []
    real = tqdm.auto.tqdm

    class Counted(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.shown = {"desc": kwargs.get("desc"), "total": kwargs.get("total"), "counted": 0}
            if not kwargs.get("disable"):
                bars.append(self.shown)

        def update(self, n=1):
            self.shown["counted"] += n
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Counted)
    assets, cfg = _goldilocks_case()
    ws = Workspace(tmp_path, progress=progress)
    M._goldilocks(cfg, 30, assets, ws, "fake", StudyOutput("memorization"))
    resamples = min(200, 30)
    assert bars == ([{"desc": "Goldilocks resamples", "total": 3 * resamples, "counted": 3 * resamples}]
                    if progress else [])


def test_a_step_line_clears_the_bar_it_would_share_a_console_line_with(tmp_path, monkeypatch):
    # "memorizer checkpoints:   0%|...[kfm reproduce] sampling memorizer-step1": the line followed the bar's text
    import io
    import sys

    from tqdm.auto import tqdm

    from kinetic_fm.studies.workspace import Workspace

    console = io.StringIO()                         # one terminal: stdout and stderr on the same screen
    monkeypatch.setattr(sys, "stdout", console)
    monkeypatch.setattr(sys, "stderr", console)
    ws = Workspace(tmp_path, progress=True)
    with tqdm(total=3, desc="memorizer checkpoints", file=sys.stderr, leave=False, mininterval=0) as bar:
        bar.update()
        ws.say("sampling memorizer-step1")
        bar.update()
    lines = [line.rsplit("\r", 1)[-1] for line in console.getvalue().split("\n")]
    assert "[kfm reproduce] sampling memorizer-step1" in lines, console.getvalue()


def test_the_run_table_names_the_tables_folder_as_a_link_from_the_report_reads_it(finished):
    # "tables | kfm_out/tables": relative to the folder the command ran in, not to the report
    assert "| tables | tables/ (beside this report) |" in finished[1]


def test_each_net_field_is_digested_once_and_the_study_keys_are_each_studys_own(tmp_path, monkeypatch):
    # the keys were made once per set of nets the studies read (three sets): the memorizer's checkpoints, in
    # the memorization and shaping studies' keys, were read and hashed twice (weights_digest keeps no cache)
    from dataclasses import asdict

    from kinetic_fm.studies import reproduce as module
    from kinetic_fm.studies import study_cache

    digested, loaded, keys = [], [], {}
    weights_digest, load_assets, stored_study = study_cache.weights_digest, module.load_assets, module.stored_study

    def counted(path, **kw):
        digested.append(path)
        return weights_digest(path, **kw)

    def kept(*args, **kw):
        loaded.append(load_assets(*args, **kw))
        return loaded[-1]

    def recorded(ws, name, key):
        keys[name] = key
        return stored_study(ws, name, key)

    monkeypatch.setattr(study_cache, "weights_digest", counted)
    monkeypatch.setattr(module, "load_assets", kept)
    monkeypatch.setattr(module, "stored_study", recorded)
    monkeypatch.setattr(study_cache, "stored_study", recorded)
    cfg = ReproduceConfig.preset("tiny")
    module.reproduce(cfg, tmp_path / "run", progress=False)
    (assets,) = loaded
    checkpoints = list(assets.memorizer_checkpoints.values())
    assert checkpoints and sorted(digested) == sorted(checkpoints)           # each checkpoint file read once
    for name in module.STUDIES:   # as each study's key alone makes it: the caches of earlier runs still hit
        assert keys[name] == study_cache.study_key(asdict(cfg), assets, module._unread_fields(name)), name
    assert len({keys[name]["assets"] for name in module.STUDIES}) == 3
