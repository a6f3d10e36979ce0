"""``kfm reproduce``: run the paper's four studies and write one report.

Trained nets, sampling runs and each study's result are cached in the output folder (see
:class:`Workspace` and :mod:`~kinetic_fm.studies.study_cache`), so an interrupted run resumes from
the last finished one, and a re-run with the same configuration, inputs and library trains,
samples and measures nothing: it reads the studies' tables, claims and figures and writes the report.
The last four configurations' results of each study are kept, so a run back at an earlier one reads them too;
a finished run of every study deletes the sampling stages no kept result reads, and the nets no kept result reads
that are not among the four of their kind read last.
"""
from __future__ import annotations

import math
import platform
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from .. import gemm
from ..runs.atomic import foreign_entries, named_few
from ..runs.lock import LOCK_NAME, RunLock
from .assets import NET_FIELDS, NETS_READ, load_assets
from .config import ReproduceConfig, ShapingConfig
from .memorization import run_memorization
from .output import FD_INTERVAL_TERM, StudyOutput, fd_space_text, jackknife_text, judge_text
from .quality import SampleQuality, sample_quality
from .report import TERMS_HEAD
from .semantics import general_samples, run_semantics
from .shaping import kts_schedules_text, run_shaping
from .study_cache import (ENTRIES_KEPT, EntryReads, cached_study, entries_reads, file_digest, load_stage, stored_study,
                          study_keys)
from .support import run_support
from .timings import TIMINGS_FILE, StageTimes
from .workspace import Workspace, config_hash

STUDIES = ("semantics", "support", "memorization", "shaping")
#: the nets of each kind :func:`_prune_models` keeps by when they were last read, whatever the study entries: as
#: many configurations as a study keeps entries for (:data:`~kinetic_fm.studies.study_cache.ENTRIES_KEPT`)
NETS_KEPT = ENTRIES_KEPT


def studies_problem(studies: tuple[str, ...]) -> str | None:
    """What is wrong with a selection of ``studies`` ("unknown ['x']", "['semantics'] named twice",
    "none named"), or None when it is a non-empty subset of :data:`STUDIES` naming each once (a
    repeat would fail late, on two figures of one name)."""
    unknown = [s for s in studies if s not in STUDIES]
    repeated = sorted({s for s in studies if studies.count(s) > 1})
    if unknown:
        return f"unknown {unknown}"
    if repeated:
        return f"{repeated} named twice"
    return None if studies else "none named"


def foreign_folder_problem(root: str | Path, others: list[str] | None = None) -> str | None:
    """What keeps ``root`` from being a run's folder, in words that follow its name ("is not empty and holds no
    kfm reproduce run (it holds a.csv, report.md): ..."), or None where it is new, holds nothing but our leftovers
    (:func:`~kinetic_fm.runs.atomic.is_leftover`: a lock file, a killed writer's temporaries) or is a workspace
    a run wrote (its ``timings.json``, which every run writes first, or its ``cache/`` or ``models/``: older
    ones', or the trained nets of one copied in to be reused). A run writes ``report.md``, ``tables/`` and
    ``figures/``, and a user's report there was overwritten; the files a user adds to a workspace stay. ``others``:
    :func:`~kinetic_fm.runs.atomic.foreign_entries` of ``root`` where the caller has them."""
    root = Path(root)
    ours = (root / TIMINGS_FILE).is_file() or (root / "cache").is_dir() or (root / "models").is_dir()
    if not root.is_dir() or ours:
        return None
    others = foreign_entries(root) if others is None else others
    if not others:
        return None
    return (f"is not empty and holds no kfm reproduce run (it holds {named_few(others)}): the run would write its "
            "report, tables and figures among them; choose a new or empty folder, or one kfm reproduce wrote")


def reproduce(cfg: ReproduceConfig, out: str | Path, *, studies: tuple[str, ...] = STUDIES,
              progress: bool = True) -> tuple[Path, Path]:
    """Run ``studies`` under ``cfg``, write tables to ``out/tables`` and the report; return (md, html) paths.

    ``out`` caches the nets, the sampling stages and each study's result
    (:mod:`~kinetic_fm.studies.study_cache`): a rerun measures only what a changed setting, input or
    library source touches (and a study that warned), so a rerun of a finished run writes the report
    from the cache.

    The run holds ``out``'s lock (:class:`~kinetic_fm.runs.RunLock`): a second run into the same
    folder stops at once with :class:`~kinetic_fm.runs.RunLockedError`. A folder of other files is refused
    (:func:`foreign_folder_problem`). A run refused before its
    first result into a new folder (or one holding only the lock file such a run leaves, or a killed
    writer's temporaries: :func:`~kinetic_fm.runs.atomic.is_leftover`) leaves it holding only that lock
    file, which the next run takes as new.

    NumPy's and SciPy's BLAS run single-threaded for the whole run, unless OPENBLAS_NUM_THREADS is set
    (:func:`~kinetic_fm.gemm.numpy_blas_single_threaded`); their thread counts come back afterwards.
    """
    problem = studies_problem(studies)
    if problem:
        raise ValueError(f"studies must be a subset of {STUDIES}, each once; got {tuple(studies)} ({problem})")
    root = Path(out)
    others = foreign_entries(root) if root.is_dir() else []
    foreign = foreign_folder_problem(root, others)
    if foreign:
        raise ValueError(f"{root} {foreign}")
    # a lock file is what a refused run leaves (it is never deleted), a temporary what a killed writer leaves:
    # a folder holding nothing else is new too
    fresh = not root.exists() or (root.is_dir() and not others)
    ws = Workspace(out, progress=progress)
    # the studies' covariances, eigenproblems and statistics call NumPy's and SciPy's OpenBLAS between
    # torch passes, which its spinning workers slowed; a user's OPENBLAS_NUM_THREADS is kept
    with RunLock(ws.root, resume="run the same command again"), gemm.numpy_blas_single_threaded(unless_user_set=True):
        try:
            ws.remove_leftover_temporaries()
            with ws.recording_reads() as used:
                paths = _run_studies(cfg, ws, studies, progress)
        except BaseException:  # an interrupted or failed run prunes nothing: it resumes from every stage
            if fresh:  # a run refused before its first result leaves no empty workspace behind
                _remove_skeleton(root)
            raise
        if set(studies) == set(STUDIES):
            listed = entries_reads(ws)
            _prune_stages(ws, used, listed)
            _prune_models(ws, listed)
        return paths


def _prune_stages(ws: Workspace, used: set[Path], listed: EntryReads) -> None:
    """Delete the sampling stages in ``cache/`` that neither this run (of every study, finished) read or
    computed (``used``) nor a kept study entry lists in its inputs
    (``listed``: :func:`~kinetic_fm.studies.study_cache.entries_reads`, those of a study that warned among them),
    and the sample-quality stages (:func:`_sample_quality`) of samples deleted: those of other configurations,
    cache epochs and libraries, which piled up run after run. A run back at a configuration whose entries were
    kept reads them; at another one it samples again. Study entries and judging classifiers stay
    (:data:`~kinetic_fm.studies.workspace.UNPRUNED`).

    A run of some studies (``--studies``) prunes nothing: a stage of a study it did not run that no entry
    lists (its entry was evicted) cannot be told from a stale one, and deleting it would cost the next full
    run a sampling run to spare a few MB."""
    kept = {path.name for path in used} | listed.inputs
    for path in (ws.root / "cache").glob("quality-*.pt"):
        if path.name not in kept:  # this run's is kept unread
            inputs = _quality_inputs(path)
            if inputs is not None and inputs <= kept:
                kept.add(path.name)
    files, size = ws.prune_stages(kept)
    if files:
        ws.say(f"cache: deleted {files} sampling stage files of other configurations, {size / 1e6:.1f} MB")


def _prune_models(ws: Workspace, listed: EntryReads) -> None:
    """Delete the run folders of ``models/`` (``<kind>-<hash>``:
    :meth:`~kinetic_fm.studies.workspace.Workspace.is_model_folder`) that neither this run (of every study,
    finished) read (``ws.models_read``) nor a study entry in ``cache/`` lists (``listed``:
    :func:`~kinetic_fm.studies.study_cache.entries_reads`, of any library) nor are among the :data:`NETS_KEPT` of
    their kind read last (:meth:`~kinetic_fm.studies.workspace.Workspace.model_path` marks a folder read): the nets
    of other configurations and model epochs (a ``--quick`` memorizer's folder, with its checkpoints, is ~70 MB),
    which piled up run after run, as :func:`_prune_stages` does for their samples. By recency, not by the entries
    alone: the entries of another library go at its first run, but the nets, keyed on their model epoch, outlive a
    change of the code (a ``--full`` net, hours of training, through a ``--quick`` run after an upgrade). A run back
    at a configuration whose nets were kept reads them; at another one it trains them again. A folder holding a
    resume state (a training interrupted at another configuration: a run back at it resumes), one whose lock
    another process holds and, where no lock can be taken, one whose training did not finish stay
    (:meth:`~kinetic_fm.studies.workspace.Workspace.remove_model`)."""
    recency: dict[str, list[tuple[int, str]]] = {}
    for folder in (ws.root / "models").iterdir():
        if Workspace.is_model_folder(folder.name) and folder.is_dir() and not folder.is_symlink():
            try:
                read_at = folder.stat().st_mtime_ns
            except OSError:  # gone meanwhile
                continue
            recency.setdefault(folder.name.rpartition("-")[0], []).append((read_at, folder.name))
    kept = ws.models_read | listed.models
    for named in recency.values():
        kept |= {name for _, name in sorted(named, reverse=True)[:NETS_KEPT]}
    folders = size = 0
    for name in sorted({name for named in recency.values() for _, name in named} - kept):
        folder = ws.root / "models" / name
        size += ws.remove_model(folder)
        folders += not folder.exists()
    if folders:
        ws.say(f"models: deleted {folders} net folders of other configurations, {size / 1e6:.1f} MB")


def _remove_skeleton(root: Path) -> None:
    """Empty ``root`` (except its lock file) when it holds nothing but a workspace's empty
    folders and its stage times: what a run that failed before its first result (data too small,
    a refused classifier) leaves. Called holding the lock, which stays: a lock file is never
    deleted (:mod:`kinetic_fm.runs.lock`)."""
    lock = root / LOCK_NAME
    if any((p.is_file() or p.is_symlink()) and p not in (lock, root / TIMINGS_FILE) for p in root.rglob("*")):
        return
    for child in root.iterdir():
        if child == lock:
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _run_studies(cfg: ReproduceConfig, ws: Workspace, studies: tuple[str, ...], progress: bool) -> tuple[Path, Path]:
    from .report import write_report

    # each invocation's stage times are kept in the workspace: a resumed run's report counts them all
    times = StageTimes.start(ws.root, config_hash({"config": asdict(cfg), "studies": list(studies)}))
    _say_resumed(ws, times)
    ws.say("data, judging classifier and velocity nets (trained here or read from models/)")
    with times.stage("data, classifier and models"):
        assets = load_assets(cfg.assets, ws, progress, nets={net for name in studies for net in NETS_READ[name]})
    asset_key = config_hash(cfg.assets.sample_settings())
    runners = {
        "semantics": lambda: run_semantics(cfg.semantics, assets, ws, asset_key),
        "support": lambda: run_support(cfg.support, cfg.semantics, assets, ws, asset_key),
        "memorization": lambda: run_memorization(cfg.memorization, cfg.semantics, assets, ws, asset_key, progress),
        "shaping": lambda: run_shaping(cfg.shaping, assets, ws, asset_key, progress),
    }
    outputs: list[StudyOutput] = []
    # every study's entry is keyed on the whole configuration and the assets it reads (not a net it never reads);
    # one pass over the data and the nets' weights makes every study's digest
    keys = study_keys(asdict(cfg), assets, {name: _unread_fields(name) for name in STUDIES})
    for name in studies:
        ws.say(f"study: {name}")
        with times.stage(name):
            outputs.append(cached_study(ws, name, keys[name], runners[name], nets=NETS_READ[name]))
    kept = _kept_studies(ws, studies, keys)
    outputs += kept
    _say_removed(ws, outputs)
    ws.remove_tables_except({f"{o.name}__{t}" for o in outputs for t in o.tables})  # the folder mirrors the report
    for output in outputs:
        for table_name, frame in output.tables.items():
            ws.save_table(f"{output.name}__{table_name}", frame)

    claims = [c for o in outputs for c in o.claims]
    sections = [s for o in outputs for s in o.sections]
    quality, sampled = None, ws.stages_computed  # the check's own stage is one of "reading them, the check"
    shown = tuple(o.name for o in outputs)
    if {"semantics", "support", "memorization"} & set(shown) and assets.general is not None:  # samples cached by now
        ws.say("sample quality: Fréchet distances of the generalising model's samples")
        quality = _sample_quality(cfg, assets, ws, asset_key, keys["semantics"])
    timings, total = times.totals()
    invocations = len(times.counted())
    configuration = asdict(cfg)
    # the Run table shows None as a dash; say what the default stands for
    judge = (f"trained here ({assets.classifier_name})" if assets.classifier is not None
             else f"none (no labels; {fd_space_text(assets)})")
    unset = {"n_train": "whole training split", "classifier": judge,
             "width": "the model's default"}
    configuration["assets"] = {k: unset.get(k, v) if v is None else v for k, v in configuration["assets"].items()}
    if assets.classifier is None or assets.classifier_pretrained:  # no classifier was trained here
        steps = configuration["assets"]["classifier_steps"]
        configuration["assets"]["classifier_steps"] = f"{steps} (not used: no classifier trained here)"
    meta = {
        "mode": cfg.mode,
        "data": f"{cfg.assets.data} ({assets.source}; {len(assets.train)} training, {len(assets.heldout)} held-out images)",
        "classifier": judge_text(assets),
        "device": cfg.assets.device,
        "seconds per stage": ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + (
            "" if invocations == 1 else f" (summed over {invocations} invocations, the run interrupted and resumed; "
            "this one: " + ", ".join(f"{k} {v:.1f}" for k, v in times.current["stages"].items()) + ")"),
        "total seconds": f"{total:.1f}" + (
            "" if invocations == 1 else f" over {invocations} invocations (this one {times.current['seconds']:.1f})"),
        "configuration": configuration,
        "versions": f"kinetic_fm {_version()}, torch {torch.__version__}, python {platform.python_version()}",
        "tables": "tables/ (beside this report)",   # the folder the command ran in is not the reader's
    }
    if quality is not None:
        meta["sample quality"] = quality.sentence()
    intro = (_intro(cfg.assets.data, cfg.mode, quality) + "\n\n"
             + _overview(cfg, studies, assets, timings, total, invocations,
                         from_cache=invocations == 1 and sampled == 0
                         and ws.stages_loaded + ws.studies_loaded > 0,
                         studies_from_cache=ws.studies_computed == 0, kept=tuple(o.name for o in kept)) + "\n\n"
             + per_sample_columns_text(shown)
             + _scale(cfg, shown, tuple(assets.train.shape[1:]), len(assets.train)) + "\n\n"
             + terms_text(assets.classifier_name, assets.classifier is not None, cfg.shaping))
    earlier = ws.report_figures()
    paths = write_report(ws.root, title="Kinetic energy of flow matching: reproduction report", intro=intro,
                         claims=claims, sections=sections, meta=meta)
    ws.remove_figures(earlier - {fig.name for section in sections for fig in section.figures})
    times.finish()
    return paths


def _say_resumed(ws: Workspace, times: StageTimes) -> None:
    """Say that this run resumes an interrupted one (same settings, not finished: ``times``) and how many
    stages it finished: the files of ``cache/`` written (or, a study's entry, read) since the first
    interrupted invocation started, which this run reads instead of computing. Nothing for a first run, a
    rerun of a finished one, or an interrupted run that finished no stage (training says where it resumes)."""
    counted = times.counted()
    if len(counted) < 2:
        return
    started = float(counted[0].get("started", 0.0))
    finished = 0
    for path in (ws.root / "cache").glob("*.pt"):
        try:
            finished += path.stat().st_mtime >= started
        except OSError:   # gone meanwhile
            continue
    if finished:
        ws.say(f"resuming: {finished} finished stages in {ws.root / 'cache'} are reused")


def _unread_fields(study: str) -> tuple[str, ...]:
    """The :class:`~kinetic_fm.studies.assets.Assets` fields of the nets ``study`` never reads."""
    return tuple(field for net, fields in NET_FIELDS.items() if net not in NETS_READ[study] for field in fields)


def _kept_studies(ws: Workspace, studies: tuple[str, ...], keys: dict[str, dict | None]) -> list[StudyOutput]:
    """The results of the studies a run of ``studies`` (``--studies``) did not run that an earlier run into ``ws``
    finished under the same key (configuration, the assets they read, library and style), read from their cache
    entries: the report shows every finished study, as a full run does, instead of dropping them. Said in the
    console, as each study is."""
    kept = []
    for name in STUDIES:
        output = None if name in studies else stored_study(ws, name, keys[name])
        if output is not None:
            ws.say(f"study: {name}, not run now: its result from an earlier run into this folder with the same "
                   "settings is kept (read from cache/)")
            kept.append(output)
    return kept


def _say_removed(ws: Workspace, outputs: list[StudyOutput]) -> None:
    """Say which studies' tables an earlier run left in ``ws`` go now, this report holding no result of theirs
    (they were of other settings, or no run finished them at these): the folder mirrors its report."""
    shown = {o.name for o in outputs}
    gone = sorted({path.stem.split("__")[0] for path in (ws.root / "tables").glob("*.parquet")} - shown)
    gone = [name for name in gone if name in STUDIES]
    if gone:
        ws.say(f"removing the tables and figures of {', '.join(gone)} from an earlier run: this folder holds no "
               "finished result of theirs for these settings (run them with these settings to get them back)")


def _sample_quality(cfg: ReproduceConfig, assets, ws: Workspace, asset_key: str, key: dict | None) -> SampleQuality:
    """:func:`~kinetic_fm.studies.quality.sample_quality` of the generalising model's samples, cached as stage
    ``quality`` keyed on what it reads: the assets' and the library's digests of the studies' ``key``
    (:func:`~kinetic_fm.studies.study_cache.study_key`), the seed that picks its training images and the digest
    of the samples' stage file, so that a rerun whose studies all come from the cache judges no row again;
    computed uncached when ``key`` is None. The stage names the stage files it read (``inputs``): it is kept
    while they are (:func:`_prune_stages`)."""
    with ws.recording_reads() as read:
        run = general_samples(cfg.semantics, assets, ws, asset_key)
    if key is None:
        return sample_quality(assets, run, seed=cfg.assets.seed)

    inputs = {path.name: file_digest(ws, path) for path in sorted(read)}

    def measure() -> dict:
        q = sample_quality(assets, run, seed=cfg.assets.seed)
        return {"samples": float(q.samples), "real": float(q.real), "noise": float(q.noise), "n": int(q.n),
                "network": str(q.network), "dim": None if q.dim is None else int(q.dim), "inputs": list(inputs)}

    result = ws.cached("quality", {"assets": key["assets"], "code": key["code"], "seed": cfg.assets.seed,
                                   "inputs": inputs}, measure)
    return SampleQuality(**{name: value for name, value in result.items() if name != "inputs"})


def _quality_inputs(path: Path) -> set[str] | None:
    """The names of the stage files the sample-quality stage at ``path`` read, None when it does not say
    (written before it did, damaged): kept only by a run that reads it."""
    stage = load_stage(path)
    try:
        return None if stage is None else set(stage["inputs"])
    except (KeyError, TypeError):
        return None


def _intro(data: str, mode: str, quality: SampleQuality | None = None) -> str:
    """The report's opening paragraph; a tiny run, or one whose generalising model draws samples
    closer to noise than to real images (``quality``), says that its verdicts are not evidence; any
    other run with a ``quality`` check says its samples passed it, with the check's numbers."""
    intro = (
        "This report re-runs the analyses of “A Kinetic Energy Perspective of Flow Matching” (Li et al., "
        f"ICML 2026) on `{data}` at {mode} size. Each claim of the paper gets a row: the "
        "paper's figure, ours, the sample size and interval, and a plain verdict. The paper's figures come "
        "from ImageNet-256, CIFAR-10 and CelebA-32 models; ours from small nets trained here, so magnitudes "
        "differ and only directions are compared. An honest negative result is a result."
        "\n\n**Verdicts.** “Reproduced”: our 95% interval (or a test at the 5% level) lies on the "
        "paper's side of zero or of the threshold the row's note names. “Not reproduced”: it lies on the "
        "other side; the data point against the claim. “Inconclusive”: neither: mostly the interval covers zero "
        "(or the threshold), so at this sample size the data neither support nor contradict the claim's direction "
        "(the row's note says where the interval still rules out the paper's size). A claim "
        "of two parts that must both hold (“improves quality and reduces memorization”) is not reproduced when "
        "either part points against it; a row whose two tests ask one thing (Goldilocks) is inconclusive when "
        "they point different ways (its note gives both). “Not "
        "measured”: this data set cannot measure it (semantics without labels). Where a "
        "claim can be decided by any one of several parts, each part is tested at 5% divided by their "
        "number. Each row's note gives its rule. Intervals of differences of Fréchet distances are basic "
        "bootstrap intervals (the resampled differences reflected about the estimate): the FD estimator's "
        "bias grows with a set's spread and a resample adds about as much again, so percentile intervals "
        "would centre near twice the difference of the biases; an interval of one set's FD (a bar's whisker) is "
        "a bias-corrected delete-a-group jackknife interval (Terms); intervals of one set's F_mem are Wilson "
        "intervals, of a difference of F_mem paired percentile bootstrap ones, and of ρ BCa (or percentile) "
        "ones, as their notes say."
    )
    if mode == "tiny":
        intro += (
            "\n\n**This is a tiny run, a smoke test of the pipeline**: its nets train for a few dozen "
            "steps and their samples are still far from the data, and its groups hold a dozen samples. "
            "The verdicts below show that every study runs; they are not evidence for or against the "
            "paper. Run `--quick` or `--full` for results."
        )
    elif quality is not None and not quality.data_like:
        intro += (
            "\n\n**The generalising model's samples are not data-like**: by "
            f"{quality.sentence()}. A judge that never saw noise scores it anyway, so margins, local "
            "support and quality splits here follow how noisy a sample is: the verdicts below are not "
            "evidence for or against the paper. `--full` trains the U-Net for longer (hours on a CPU; "
            "add `--device cuda` where there is a GPU)."
        )
    elif quality is not None:  # the check that makes the verdicts evidence: said up front, not only in the Run table
        intro += f"\n\n**The generalising model's samples are data-like**: by {quality.sentence()}."
    return intro


def _overview(cfg: ReproduceConfig, studies: tuple[str, ...], assets, timings: dict[str, float], total: float,
              invocations: int = 1, *, from_cache: bool = False, studies_from_cache: bool = False,
              kept: tuple[str, ...] = ()) -> str:
    """What ran, on what, how long (``timings`` and ``total`` summed over ``invocations``, the
    interrupted ones this run resumed and itself), from which seeds, and where each file is.
    ``from_cache``: this run sampled nothing, every sampling run was read from ``cache/``, so
    its seconds are not what the studies cost (a re-run read "in 55 s", models 0 s);
    ``studies_from_cache``: and every study's result was read too (its metrics not recomputed); ``kept``: the
    studies this run did not run whose results an earlier run into the folder finished (shown too)."""
    a, sem, mem, sh = cfg.assets, cfg.semantics, cfg.memorization, cfg.shaping
    ran, studies = studies, studies + kept
    seeds = []
    if {"semantics", "support", "memorization"} & set(studies):
        seeds.append(f"the generalising model (semantics, support, Goldilocks) {sem.seed_start}–"
                     f"{sem.seed_start + sem.n_samples - 1}")
    if "support" in studies:
        seeds.append("the 2-D mixture from 0")
    if "memorization" in studies:
        seeds.append(f"EFM {mem.seed_start}–{mem.seed_start + mem.efm_samples - 1}, memorizer checkpoints "
                     f"{mem.seed_start}–{mem.seed_start + mem.checkpoint_samples - 1}")
    if "shaping" in studies:
        seeds.append(f"KTS grid {sh.seed_start}–{sh.seed_start + sh.n_samples - 1}")
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    if invocations > 1:
        resumed = "once" if invocations == 2 else f"{invocations - 1} times"
        stages = (f"over {invocations} invocations: the run was interrupted and resumed {resumed}; per stage, "
                  f"summed: {stages}")
    return (
        f"**What ran.** Studies {', '.join(ran)} on `{a.data}` ({assets.source}; {len(assets.train)} training "
        f"and {len(assets.heldout)} held-out images), on `{a.device}`, in {total:.0f} s ({stages})."
        + (f" Also shown, not run now (`--studies {','.join(ran)}`): {', '.join(kept)}, as an earlier run into this "
           "folder with the same settings, inputs and library finished them, read from `cache/`." if kept else "")
        + (" This run sampled and measured nothing: every study's tables, claims and figures were read from "
           "`cache/`, written by an earlier run into this folder with the same settings, inputs and library, so these "
           "are the seconds of reading them, the sample-quality check and the report; `timings.json` keeps the "
           "earlier run's." if from_cache and studies_from_cache else
           " This run sampled nothing: every sampling run was read from `cache/`, written by an earlier run into "
           "this folder, so these are the seconds of the metrics, intervals and figures; `timings.json` keeps the "
           "earlier run's." if from_cache else "")
        + " Nets: "
        f"{'' if assets.classifier is None else 'the judging classifier '}{judge_text(assets)}, a generalising velocity net ({a.model}, "
        f"{a.general_steps} steps on the training split) and a memorizing one ({a.memorizer_steps} steps on "
        f"{len(assets.memorizer_train)} images), trained here with seed {a.seed} or reloaded from `models/`. Sample "
        f"seeds, one noise draw per seed, shared by every setting of a study: {'; '.join(seeds)}. Files beside this "
        "report: `figures/*.png` (every figure), `tables/<study>__<table>.parquet` (the per-sample and "
        "summary tables behind each section), `models/` and `cache/` (trained nets and sampling runs, reused by a "
        "re-run with the same settings), `timings.json` (each invocation's seconds per stage). The full "
        "configuration is in the Run table at the end."
    )


def per_sample_columns_text(studies: tuple[str, ...] = STUDIES) -> str:
    """What the per-sample energy columns of the study tables hold (:func:`~kinetic_fm.studies.samples.energy_frame`),
    one line each, beside the list of the report's files, and a blank line after; "" when none of ``studies``
    writes such a table."""
    from ..sampling.sample import DEFAULT_SPLIT

    tables = (["semantics__general_samples"] if "semantics" in studies else []) + (
        ["memorization__efm_n*", "memorization__memorizer_final"] if "memorization" in studies else [])
    if not tables:
        return ""
    return (
        "**Per-sample energy columns** (the tables with one row per sample: "
        + ", ".join(f"`{name}`" for name in tables) + "):\n\n"
        "- `seed`: the seed of the sample's noise x0.\n"
        "- `kpe`: its KPE, ½∫η²‖v‖² dt (η = 1 without shaping).\n"
        "- `kpe_raw`: the same integral without the gain, ½∫‖v‖² dt (equal to `kpe` for plain FM).\n"
        f"- `early`, `late`: the parts of `kpe` spent before and from the sampler's split time (t = {DEFAULT_SPLIT:g} "
        "unless a KTS τ sets it, on a fixed grid the start of the first step from there): early + late = kpe.\n"
        "- `peak`: the largest energy one step adds, ½h Σ_j w_j η_j²‖v_j‖² over its stages j (w_j the "
        "solver's weights; it shrinks with the step h).\n"
        "- `late_fraction_t0.9`: the share of `kpe` spent after t = 0.9.\n\n"
    )


def _scale(cfg: ReproduceConfig, studies: tuple[str, ...], image_shape: tuple[int, ...], n_train: int) -> str:
    """How the run's size compares with the paper's, so a reader weighs the intervals: image size
    and dimension, training images, samples per study (``image_shape`` (C, H, W) of one image)."""
    dim = math.prod(image_shape)
    size = "×".join(str(s) for s in image_shape[1:]) + ("" if image_shape[0] == 1 else f"×{image_shape[0]}")
    counts = []
    if {"semantics", "support", "memorization"} & set(studies):
        counts.append(f"{cfg.semantics.n_samples} from the generalising model")
    if "memorization" in studies:
        counts.append(f"{cfg.memorization.efm_samples} per EFM subset and {cfg.memorization.checkpoint_samples} "
                      "per memorizer checkpoint")
    if "shaping" in studies:
        counts.append(f"{cfg.shaping.n_samples} per KTS setting")
    return (
        f"**Scale.** A {cfg.mode} run: {size} images (D = {dim} values, pixels scaled to [-1, 1]), {n_train} "
        f"training images, samples: {'; '.join(counts)}. The paper works on CIFAR-10 and CelebA-32 (32×32×3, "
        "D = 3072) and ImageNet-256 (SiT), with nets trained on 50,000 or more images, so our effects and their "
        "intervals describe this small setting only. A verdict reads the effect's direction: an inconclusive row "
        "says this run has not shown the direction, not that the paper is wrong. Where the paper gives a size "
        "ours can be set against (a correlation ρ, a change of FD as a share of plain FM's, a difference of "
        "F_mem) and our interval excludes it on the side of zero, the row's note says that the interval rules "
        "out the paper's value: an effect, if any, far smaller here."
        + (" `--full` draws 2.5–4 times as many samples and trains the nets longer." if cfg.mode == "quick" else "")
    )


def terms_text(fd_space: str, classifier: bool = True, shaping: ShapingConfig | None = None) -> str:
    """The report's glossary: each abbreviation its tables and claims use, defined once. ``fd_space``
    names the Fréchet distance's feature space (the judging classifier, or without one the
    principal space), as the tables write FD-<fd_space>. ``shaping``: the KTS study's settings, whose
    schedules and gains (:func:`~kinetic_fm.studies.shaping.kts_schedules_text`) follow the KTS entry."""
    fd = (f"FD-{fd_space}: the Fréchet distance between Gaussian fits to the penultimate-layer features of the "
          f"judging classifier `{fd_space}` (FID's recipe with this net in place of Inception; lower is better; "
          "not comparable with published FIDs, nor between sets of different sizes, since its bias shrinks as "
          "the set grows)" if classifier else
          f"FD-{fd_space}: the Fréchet distance between Gaussian fits to the samples in the `{fd_space}` space "
          "(lower is better; not comparable with published FIDs, nor between sets of different sizes)")
    return (
        f"{TERMS_HEAD} KPE (kinetic path energy) of a sample: ½∫₀¹ η(t)²‖v(x_t, t)‖² dt along its "
        "sampling trajectory from noise x0 (t = 0) to the sample x1 (t = 1), in squared pixel units; a straight "
        "path at constant speed has the least, ½‖x1 − x0‖². Kinetic power: the integrand ½η²‖v‖². KTS (Kinetic "
        "Trajectory Shaping): sampling with ẋ = η(t)·v, a launch boost η = 1 + α(t) (size α0) before t = τ "
        "(τ_split) and a landing brake η = 1 − β(t) (size β0) after it; plain FM is η = 1. "
        + ("" if shaping is None else kts_schedules_text(shaping) + ". ")
        + "NFE: the number of "
        "velocity evaluations of a sampling run (the KTS grid's NFE rows take more steps). EFM: the exact "
        "empirical flow-matching velocity of N training images, in closed form (no net). F_mem: the fraction "
        "of samples whose nearest training image is nearer than 1/3 of the distance to the second nearest "
        f"(gap ratio d1/d2 < 1/3). {fd}. {FD_INTERVAL_TERM} (a whisker on one set's FD): {jackknife_text()}. "
        "Margin: the judging classifier's "
        "top-1 minus top-2 logit. ρ: Spearman's rank correlation; d: Cohen's d (difference of means over the "
        "pooled standard deviation); CI: confidence interval."
    )


def _version() -> str:
    from .._version import __version__

    return __version__
