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

from ..runs.atomic import holds_only_leftovers
from ..runs.lock import LOCK_NAME, RunLock
from .assets import load_assets
from .config import ReproduceConfig
from .memorization import run_memorization
from .output import FD_INTERVAL_TERM, StudyOutput, fd_space_text, jackknife_text, judge_text
from .quality import SampleQuality, sample_quality
from .report import TERMS_HEAD
from .semantics import general_samples, run_semantics
from .shaping import run_shaping
from .study_cache import ENTRIES_KEPT, EntryReads, cached_study, entries_reads, file_digest, study_key
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


def reproduce(cfg: ReproduceConfig, out: str | Path, *, studies: tuple[str, ...] = STUDIES,
              progress: bool = True) -> tuple[Path, Path]:
    """Run ``studies`` under ``cfg``, write tables to ``out/tables`` and the report; return (md, html) paths.

    ``out`` caches the nets, the sampling stages and each study's result
    (:mod:`~kinetic_fm.studies.study_cache`): a rerun measures only what a changed setting, input or
    library source touches (and a study that warned), so a rerun of a finished run writes the report
    from the cache.

    The run holds ``out``'s lock (:class:`~kinetic_fm.runs.RunLock`): a second run into the same
    folder stops at once with :class:`~kinetic_fm.runs.RunLockedError`. A run refused before its
    first result into a new folder (or one holding only the lock file such a run leaves, or a killed
    writer's temporaries: :func:`~kinetic_fm.runs.atomic.is_leftover`) leaves it holding only that lock
    file, which the next run takes as new.
    """
    problem = studies_problem(studies)
    if problem:
        raise ValueError(f"studies must be a subset of {STUDIES}, each once; got {tuple(studies)} ({problem})")
    root = Path(out)
    # a lock file is what a refused run leaves (it is never deleted), a temporary what a killed writer leaves:
    # a folder holding nothing else is new too
    fresh = not root.exists() or (root.is_dir() and holds_only_leftovers(root))
    ws = Workspace(out, progress=progress)
    with RunLock(ws.root, resume="run the same command again"):
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
    ws.say("data, judging classifier and velocity nets (trained here or read from models/)")
    with times.stage("data, classifier and models"):
        assets = load_assets(cfg.assets, ws, progress)
    asset_key = config_hash(cfg.assets.sample_settings())
    runners = {
        "semantics": lambda: run_semantics(cfg.semantics, assets, ws, asset_key),
        "support": lambda: run_support(cfg.support, cfg.semantics, assets, ws, asset_key),
        "memorization": lambda: run_memorization(cfg.memorization, cfg.semantics, assets, ws, asset_key, progress),
        "shaping": lambda: run_shaping(cfg.shaping, assets, ws, asset_key, progress),
    }
    outputs: list[StudyOutput] = []
    key = study_key(asdict(cfg), assets)  # every study's entry is keyed on the whole configuration
    for name in studies:
        ws.say(f"study: {name}")
        with times.stage(name):
            outputs.append(cached_study(ws, name, key, runners[name]))
    ws.remove_tables_except({f"{o.name}__{t}" for o in outputs for t in o.tables})  # the folder mirrors the report
    for output in outputs:
        for table_name, frame in output.tables.items():
            ws.save_table(f"{output.name}__{table_name}", frame)

    claims = [c for o in outputs for c in o.claims]
    sections = [s for o in outputs for s in o.sections]
    quality, sampled = None, ws.stages_computed  # the check's own stage is one of "reading them, the check"
    if {"semantics", "support", "memorization"} & set(studies):  # their samples are cached by now
        ws.say("sample quality: Fréchet distances of the generalising model's samples")
        quality = _sample_quality(cfg, assets, ws, asset_key, key)
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
        "tables": str(ws.root / "tables"),
    }
    if quality is not None:
        meta["sample quality"] = quality.sentence()
    intro = (_intro(cfg.assets.data, cfg.mode, quality) + "\n\n"
             + _overview(cfg, studies, assets, timings, total, invocations,
                         from_cache=invocations == 1 and sampled == 0
                         and ws.stages_loaded + ws.studies_loaded > 0,
                         studies_from_cache=ws.studies_computed == 0) + "\n\n"
             + _scale(cfg, studies, tuple(assets.train.shape[1:]), len(assets.train)) + "\n\n"
             + terms_text(assets.classifier_name, assets.classifier is not None))
    earlier = ws.report_figures()
    paths = write_report(ws.root, title="Kinetic energy of flow matching: reproduction report", intro=intro,
                         claims=claims, sections=sections, meta=meta)
    ws.remove_figures(earlier - {fig.name for section in sections for fig in section.figures})
    times.finish()
    return paths


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
    try:
        return set(torch.load(path, map_location="cpu", weights_only=True)["inputs"])
    except Exception:
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
        "(or the threshold), so at this sample size the data neither support nor contradict the claim. A claim "
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
              invocations: int = 1, *, from_cache: bool = False, studies_from_cache: bool = False) -> str:
    """What ran, on what, how long (``timings`` and ``total`` summed over ``invocations``, the
    interrupted ones this run resumed and itself), from which seeds, and where each file is.
    ``from_cache``: this run sampled nothing, every sampling run was read from ``cache/``, so
    its seconds are not what the studies cost (a re-run read "in 55 s", models 0 s);
    ``studies_from_cache``: and every study's result was read too (its metrics not recomputed)."""
    a, sem, mem, sh = cfg.assets, cfg.semantics, cfg.memorization, cfg.shaping
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
        f"**What ran.** Studies {', '.join(studies)} on `{a.data}` ({assets.source}; {len(assets.train)} training "
        f"and {len(assets.heldout)} held-out images), on `{a.device}`, in {total:.0f} s ({stages})."
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
        "intervals describe this small setting only: an inconclusive row says this run cannot show the effect, "
        "not that the paper is wrong."
        + (" `--full` draws 2.5–4 times as many samples and trains the nets longer." if cfg.mode == "quick" else "")
    )


def terms_text(fd_space: str, classifier: bool = True) -> str:
    """The report's glossary: each abbreviation its tables and claims use, defined once. ``fd_space``
    names the Fréchet distance's feature space (the judging classifier, or without one the
    principal space), as the tables write FD-<fd_space>."""
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
        "(τ_split) and a landing brake η = 1 − β(t) (size β0) after it; plain FM is η = 1. NFE: the number of "
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
