"""Study 4, shaping: Kinetic Trajectory Shaping against plain flow matching on a memorizing net.

The paper (CelebA-32, n = 1024 training images) reports FID / F_mem (F_mem as a fraction, as the
report writes it): plain FM 16.68 / 0.3734, launch only (α0 = 0.02) 11.27 / 0.3678, landing only
(β0 = 0.02) 86.56 / 0.1936, balanced (α0 = β0 = 0.01) 14.35 / 0.3122, and FID 60.31 / 48.58 / 14.35 /
21.07 for τ = 0.2 / 0.4 / 0.6 / 0.8.
Every setting here samples the same seeds, so differences against plain FM are paired; their
intervals come from a paired bootstrap over samples, basic intervals for FD differences (see
:func:`~kinetic_fm.studies.verdicts.basic_bootstrap`: the FD estimator's bias moves with each setting's spread).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..metrics.fidelity import Protocol
from ..metrics.memorization import memorization
from ..sampling.shaping import KTS
from .assets import Assets
from .config import ShapingConfig
from .output import (AFTER_06_COLUMN, FD_FORMAT, FRACTION_FORMAT, StudyOutput,
                     corrected_fd_column, fd_bias_note, fd_formats, fd_to_reference, fd_undecided_note, fmem_formats,
                     full_reference, image_range, jackknife_reference, jackknife_replicates,
                     fd_interval_columns, fd_interval_pointer, fd_interval_terms)
from .samples import energy_after, sampled
from .verdicts import (all_worse_than, basic_bootstrap, bonferroni_intervals, bonferroni_level, fmt_ci,
                       fmt_significant, percent_of, rules_out_paper_size, verdict_from_interval, verdict_of_all)
from .workspace import Workspace

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..metrics.fidelity import FrechetReference


@dataclass(frozen=True)
class Setting:
    name: str
    group: str
    kts: KTS | None
    solver: str = "euler"
    steps: int | None = None  # None = the config's base steps
    grid: str = "uniform"


def ablation_grid(cfg: ShapingConfig) -> list[Setting]:
    """The paper's grid: the main comparison, τ sweep, launch/landing forms, solvers, NFE and grids."""
    balanced = KTS(alpha0=0.01, beta0=0.01)
    grid = [
        Setting("plain FM", "main", None),
        Setting("launch only", "main", KTS(alpha0=0.02, beta0=0.0)),
        Setting("landing only", "main", KTS(alpha0=0.0, beta0=0.02)),
        Setting("balanced", "main", balanced),
    ]
    grid += [Setting(f"balanced τ={tau}", "tau", KTS(alpha0=0.01, beta0=0.01, tau_split=tau)) for tau in (0.2, 0.4, 0.8)]
    grid += [Setting(f"launch {form}", "launch form", KTS(alpha0=0.01, beta0=0.01, launch=form)) for form in ("constant", "exponential")]
    grid += [Setting(f"landing {form}", "landing form", KTS(alpha0=0.01, beta0=0.01, landing=form)) for form in ("linear", "constant")]
    for solver in ("midpoint", "heun"):
        grid += [Setting(f"plain FM · {solver}", "solver", None, solver=solver),
                 Setting(f"balanced · {solver}", "solver", balanced, solver=solver)]
    grid += [Setting(f"plain FM · {cfg.more_steps} steps", "NFE", None, steps=cfg.more_steps),
             Setting(f"balanced · {cfg.more_steps} steps", "NFE", balanced, steps=cfg.more_steps)]
    grid += [Setting("plain FM · cosine grid", "grid", None, grid="cosine"),
             Setting("balanced · cosine grid", "grid", balanced, grid="cosine")]
    return grid


def kts_schedules_text(cfg: ShapingConfig) -> str:
    """The KTS schedules in words for the report's Terms, with the rate k and the default forms of
    :class:`~kinetic_fm.sampling.shaping.KTS` and, for the main settings of :func:`ablation_grid`, the
    gain η they reach at t = 0 (the boost) and t = 1 (the brake), computed from the gains themselves: α0
    and β0 are sizes, not changes of η (β0 = 0.02 on the exponential landing brakes η to about 0.62)."""
    default = KTS()
    forms = {"launch": {"linear": "α0 (1 − t/τ)", "constant": "α0",
                        "exponential": "α0 (e^{k(1 − t/τ)} − 1)/(e^k − 1)"},
             "landing": {"exponential": "β0 (e^{ks} − 1)", "linear": "β0 s", "constant": "β0"}}

    def listed(phase: str, chosen: str) -> str:
        return ", ".join(f"{form} {formula}" + (" (the default)" if form == chosen else "")
                         for form, formula in forms[phase].items())

    gains = []
    for setting in ablation_grid(cfg):
        if setting.group != "main" or setting.kts is None:
            continue
        kts, ends = setting.kts, []
        if kts.alpha0:
            ends.append(f"η(0) = {kts(0.0):.3g}")
        if kts.beta0:
            brake = kts(1.0)
            ends.append(f"η(1) = {brake:.3f} (power ×{brake * brake:.2f})")
        sizes = ", ".join(f"{name} = {value:g}" for name, value in (("α0", kts.alpha0), ("β0", kts.beta0)) if value)
        gains.append(f"{setting.name} ({sizes}) {' and '.join(ends)}")
    return (f"KTS schedules: launch, t < τ: α(t) = {listed('launch', default.launch)}; landing, t ≥ τ with "
            f"s = (t − τ)/(1 − τ): β(t) = {listed('landing', default.landing)}; k = {default.k:g} and "
            f"τ = {default.tau_split:g} unless a setting names another. So α0 and β0 are sizes, not the change "
            "of η: the linear launch's boost fades from α0 at t = 0 to 0 at τ, the exponential landing's brake "
            f"grows from 0 at τ to β0 (e^k − 1) at t = 1; in the KTS grid {'; '.join(gains)}, "
            "against η = 1 for plain FM")


#: the paper's (FID, F_mem) of the main settings (CelebA-32), which the notes weigh our intervals against
PAPER_MAIN = {"plain FM": (16.68, 0.3734), "launch only": (11.27, 0.3678), "landing only": (86.56, 0.1936),
              "balanced": (14.35, 0.3122)}


def paper_size_note(ci: Interval, name: str, part: str, baseline_fd: float) -> str:
    """"; the interval ... rules out the paper's ..." when the 95% interval ``ci`` of setting ``name`` −
    plain FM excludes the paper's change towards zero (:func:`~kinetic_fm.studies.verdicts.rules_out_paper_size`),
    else "". ``part``: "FD" (the interval and the paper's FID change compared as shares of the baseline,
    ``baseline_fd``, plain FM's FD: FD and FID are on other scales) or "F_mem" (both fractions)."""
    (paper_fd, paper_mem), (base_fid, base_mem) = PAPER_MAIN[name], PAPER_MAIN["plain FM"]
    low, high = float(ci[0]), float(ci[1])
    if part == "F_mem":
        change = paper_mem - base_mem
        return f"; the interval rules out the paper's {change:+.3f}" if rules_out_paper_size(low, high, change) else ""
    if not (math.isfinite(baseline_fd) and baseline_fd > 0):
        return ""
    change = (paper_fd - base_fid) / base_fid
    if not rules_out_paper_size(low / baseline_fd, high / baseline_fd, change):
        return ""
    return (f"; the interval ({percent_of(low, baseline_fd)} to {percent_of(high, baseline_fd)} of plain FM's FD) "
            f"rules out the paper's {percent_of(paper_fd - base_fid, base_fid)} (FID {base_fid} → {paper_fd})")


# The claims' rules. Each Δ is setting − plain FM on the same seeds, given as its 95% interval
# (low, high); lower FD is better quality, lower F_mem is less copying.
Interval = Sequence[float]


def launch_only_verdict(delta_fd_ci: Interval) -> str:
    """Launch-only KTS improves quality: the paper expects ΔFD < 0 (FID 16.68 → 11.27)."""
    return verdict_from_interval(*delta_fd_ci, -1)


def landing_only_memorization_verdict(delta_mem_ci: Interval) -> str:
    """Landing-only KTS reduces memorization: the paper expects ΔF_mem < 0 (0.3734 → 0.1936)."""
    return verdict_from_interval(*delta_mem_ci, -1)


def landing_only_quality_verdict(delta_fd_ci: Interval) -> str:
    """Landing-only KTS costs quality: the paper expects ΔFD > 0 (FID 16.68 → 86.56)."""
    return verdict_from_interval(*delta_fd_ci, +1)


def balanced_verdict(delta_fd_ci: Interval, delta_mem_ci: Interval, *,
                     against: tuple[Interval, Interval] | None = None) -> str:
    """Balanced KTS improves quality and reduces memorization: the paper expects both ΔFD < 0 and
    ΔF_mem < 0 (FID 16.68 → 14.35, F_mem 0.3734 → 0.3122). ``against``: the two differences'
    intervals at 97.5% (Bonferroni over the two parts); when given, "not reproduced" needs one of
    them above 0, since either part can fail (two chances), and "reproduced" still needs both 95%
    intervals below 0 (both must hold: no correction)."""
    parts = [verdict_from_interval(*delta_fd_ci, -1), verdict_from_interval(*delta_mem_ci, -1)]
    if against is None:
        return verdict_of_all(parts)
    if any(verdict_from_interval(*ci, -1) == "not reproduced" for ci in against):
        return "not reproduced"
    return "reproduced" if parts == ["reproduced", "reproduced"] else "inconclusive"


SETTING_AXIS = "sampler setting (every one from the same seeds)"
#: the KTS grid's headers in the report: the symbols the Terms paragraph writes (the Parquet table keeps
#: alpha0, beta0 and tau, which other code reads)
GRID_HEADERS = {"alpha0": "α0", "beta0": "β0", "tau": "τ"}


def run_shaping(cfg: ShapingConfig, assets: Assets, ws: Workspace, asset_key: str, progress: bool = True) -> StudyOutput:
    """Study 4: KTS sweeps and ablations on the memorizing net.

    Samples the memorizer once per setting of :func:`ablation_grid` (plain FM, launch only,
    landing only, balanced, and the sweeps over α0, β0, τ, forms, solvers, steps and grids; the
    same seeds for all, cached in ``ws``) and measures each setting's Fréchet distance to the
    training features and its F_mem against the memorizer's training items (Wilson interval).
    The claims read paired bootstrap differences against plain FM.

    Args:
        cfg: the study's settings (samples, seeds, steps, the grid's values, bootstrap resamples).
        assets: data, judging classifier and nets from :func:`~kinetic_fm.studies.assets.load_assets`.
        ws: the workspace caching the samples.
        asset_key: ``config_hash`` of ``cfg.assets.sample_settings()``, part of every cached run's key,
            so samples are redrawn when the data or nets change.
        progress: show a bar over the settings.

    Returns:
        StudyOutput "shaping": the table ``shaping_grid`` (one row per setting: its solver, steps,
        grid and KTS, FD with its bias-corrected value and interval, F_mem with its interval, mean KPE
        and mean KPE after t = 0.6), the shaping claims and one section.
    """
    import pandas as pd

    from .figures import bar_figure, energy_profile_figure
    from .report import Section

    out = StudyOutput("shaping")
    settings = ablation_grid(cfg)
    shape = tuple(assets.train.shape[1:])
    device = next(assets.memorizer.parameters()).device
    seeds = range(cfg.seed_start, cfg.seed_start + cfg.n_samples)
    ref_rows = assets.train_features().double().numpy()
    fits = jackknife_reference(ref_rows)  # the settings' intervals' jackknife, and its full fit for their FDs
    reference = full_reference(ref_rows, fits)
    iterator = settings
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(settings, desc="KTS ablation grid", unit="setting", leave=False)
    runs, feats, memorized, rows = {}, {}, {}, []
    for s in iterator:
        steps = s.steps or cfg.steps
        run = sampled(ws, "shaping-" + _slug(s.name),
                      {"assets": asset_key, "net": "memorizer", "kts": None if s.kts is None else asdict(s.kts)},
                      assets.memorizer, seeds, shape, device=str(device),
                      steps=steps, solver=s.solver, grid=s.grid, shaping=s.kts)
        x = image_range(run["x"], assets)
        audit = memorization(x, assets.memorizer_train, interval="wilson")
        f = assets.features(x).double().numpy()
        fd = fd_to_reference(f, reference)
        runs[s.name], feats[s.name], memorized[s.name] = run, f, audit.memorized.cpu().numpy().astype(float)
        rows.append({"setting": s.name, "group": s.group, "solver": s.solver, "steps": steps, "grid": s.grid,
                     "alpha0": s.kts.alpha0 if s.kts else 0.0, "beta0": s.kts.beta0 if s.kts else 0.0,
                     "tau": s.kts.tau_split if s.kts else float("nan"),
                     # a phase whose coefficient is 0 has no form to speak of ("launch only" listed
                     # landing "exponential")
                     "launch": s.kts.launch if s.kts and s.kts.alpha0 else "–",
                     "landing": s.kts.landing if s.kts and s.kts.beta0 else "–",
                     "FD": fd, "F_mem": audit.fraction, "F_mem CI low": audit.ci[0], "F_mem CI high": audit.ci[1],
                     "mean KPE": float(run["kpe"].mean()),
                     AFTER_06_COLUMN: float(energy_after(run, 0.6).mean())})
    table = pd.DataFrame(rows)
    fd_name = Protocol(assets.classifier_name).fd_name
    table = table.rename(columns={"FD": fd_name})
    out.tables["shaping_grid"] = table

    ws.say(f"shaping: paired bootstrap intervals of the claims ({cfg.bootstrap} resamples)")
    rng = np.random.default_rng(cfg.seed_start)
    boot = rng.integers(0, cfg.n_samples, size=(cfg.bootstrap, cfg.n_samples))
    value = table.set_index("setting")
    fm_fd, fm_mem = value.loc["plain FM", fd_name], value.loc["plain FM", "F_mem"]
    out.claims += shaping_claims(feats, memorized, value, fd_name, reference, boot, reference_rows=len(assets.train))
    # each setting's own interval (context for the dots; the claims read paired differences) and the
    # bias-corrected FD it is about, which the plain FD lies above by the estimator's bias
    replicates = jackknife_replicates(list(feats.values()), ref_rows, fits=fits)
    at = table.columns.get_loc(fd_name)
    for offset, (name, values) in enumerate(fd_interval_columns(fd_name, replicates).items(), start=1):
        table.insert(at + offset, name, values)

    main = ["plain FM", "launch only", "landing only", "balanced"]
    section = Section(
        "Kinetic Trajectory Shaping",
        text=(f"The memorizing net (trained on {len(assets.memorizer_train)} images) sampled from the same "
              f"{cfg.n_samples} seeds under every setting (Euler, {cfg.steps} steps unless named). F_mem against its "
              f"training images; {fd_name} against all {len(assets.train)} training images (lower is better). "
              f"Plain FM here samples the same net as the memorization study's final checkpoint, but from other "
              f"seeds, with {cfg.n_samples} samples and its own step count: an FD estimate's bias shrinks as its "
              "sample grows, so compare the FDs of this table with each other, not with that study's."
              + fd_bias_note(min(cfg.n_samples, len(assets.train)), reference.mean.size, fd_name)),
        tables=[("The KTS ablation grid", table.rename(columns=GRID_HEADERS))],
        formats={**fmem_formats(), **fd_formats(fd_name)},
        terms=fd_interval_terms(),  # the FD whiskers' caption points to it
        figures=[
            bar_figure("shaping_fmem", "F_mem across the KTS grid; whiskers: each setting's own 95% Wilson "
                       "interval; dashed: plain FM (Euler). Every setting samples the same seeds, so the claims "
                       "judge paired differences, whose intervals (claims table) are narrower than these whiskers "
                       "suggest. Compare a solver, NFE or grid setting with the plain FM beside it.", table,
                       x="setting", y="F_mem", low="F_mem CI low", high="F_mem CI high",
                       ylabel="F_mem (fraction memorized)", xlabel=SETTING_AXIS, reference=float(fm_mem),
                       reference_label="plain FM", reference_format=FRACTION_FORMAT, points=True, group="group"),
            bar_figure("shaping_fd", f"{fd_name} across the KTS grid (lower is better); whiskers: "
                       f"{fd_interval_pointer('setting', 'the dot', fd_name)}; none when the samples or the "
                       "reference have no more rows than features once a tenth is out; "
                       "dashed: plain FM's uncorrected FD (Euler). Every setting samples the same seeds, so "
                       "the paired ΔFD intervals of the main settings and the τ sweep (claims table) are "
                       "narrower than these whiskers suggest. Compare a solver, NFE or grid setting with the plain "
                       "FM beside it.",
                       table, x="setting", y=fd_name, low=f"{fd_name} CI low", high=f"{fd_name} CI high",
                       center=corrected_fd_column(fd_name), value_label=f"{fd_name} of the samples (uncorrected)",
                       center_label=f"{corrected_fd_column(fd_name)}, whisker: its 95% interval",
                       ylabel=f"{fd_name} (lower is better)", xlabel=SETTING_AXIS,
                       reference=float(fm_fd), reference_label="plain FM (uncorrected)", reference_format=FD_FORMAT,
                       points=True, group="group"),
            energy_profile_figure("energy_profile_shaping", "Kinetic power ½η²‖v‖² of the memorizing net: mean "
                                  "and 10–90% band (dotted) for plain FM and the three main KTS settings; the landing "
                                  "starts at t = τ = 0.6 (dash-dotted line).",
                                  {n: (runs[n]["times"].numpy(), runs[n]["profile"].numpy()) for n in main}, log_y=True,
                                  marks={"τ = 0.6: launch ends, landing starts": 0.6}),
        ],
    )
    out.sections.append(section)
    return out


def shaping_claims(feats: dict[str, np.ndarray], memorized: dict[str, np.ndarray], value: pd.DataFrame, fd_name: str,
                   reference: FrechetReference, boot: np.ndarray, *,
                   reference_rows: int | None = None) -> list:
    """The KTS study's claims, each judged from paired bootstrap intervals against plain FM.

    Args:
        feats: setting name → (n, d) features of its samples (same seeds in every setting).
        memorized: setting name → (n,) 0/1 memorized indicators.
        value: the grid table indexed by setting, with columns ``fd_name`` and "F_mem" (for the text).
        reference: the Fréchet reference (:func:`~kinetic_fm.studies.output.feature_reference`).
        boot: (R, n) resampled sample indices, shared by every difference (paired).
        reference_rows: the rows the reference was estimated from; with the samples' n, the
            smaller decides whether any FD part may decide (no more rows than features: none).
    Returns: the five :class:`~kinetic_fm.studies.report.Claim` rows.
    """
    from .report import Claim

    n = len(boot[0])
    claims = []
    resampled: dict[str, np.ndarray] = {}  # setting → (R,) its resampled FDs, each computed once
    point: dict[str, float] = {}
    # With no more samples than features an FD is mostly the estimator's bias, and that bias moves
    # with each setting's spread, which KTS changes: a paired interval of the difference cannot
    # tell it from a change of quality, so no FD part decides a verdict there.
    # The reference's rows count as the samples' do (the section's note takes the smaller set).
    dim = next(iter(feats.values())).shape[1]
    smallest = n if reference_rows is None else min(n, reference_rows)
    fd_undecided = smallest <= dim
    # the cell says that no FD part decides; why goes under the claims table (the row's detail)
    undecided_detail = fd_undecided_note(smallest, dim, "setting", reference=smallest < n).removeprefix("; ")
    undecided_note = "; no FD part decides here (n ≤ D)" if fd_undecided else ""

    def fd_verdict(verdict: str) -> str:
        return "inconclusive" if fd_undecided else verdict

    def paired_fd_delta(base: str, other: str) -> np.ndarray:
        # each setting's resamples once: plain FM and balanced are the base of three differences each
        for name in (base, other):
            if name not in resampled:
                resampled[name] = bootstrap_fd(feats[name], reference, boot)
                point[name] = fd_to_reference(feats[name], reference)
        return basic_bootstrap(point[other] - point[base], resampled[other] - resampled[base])

    def delta(name: str, tails=(0.025, 0.975)):
        d_fd = paired_fd_delta("plain FM", name)
        d_mem = memorized[name][boot].mean(1) - memorized["plain FM"][boot].mean(1)
        return np.quantile(d_fd, tails), np.quantile(d_mem, tails)

    fm_fd, fm_mem = value.loc["plain FM", fd_name], value.loc["plain FM", "F_mem"]

    def ours(name: str) -> str:
        return (f"{fd_name} {fmt_significant(fm_fd)} → {fmt_significant(value.loc[name, fd_name])}, "
                f"F_mem {fm_mem:{FRACTION_FORMAT}} → {value.loc[name, 'F_mem']:{FRACTION_FORMAT}}")

    # A rule that tests each of K parts at 0.05/K reads their 1 − 0.05/K intervals for "not
    # reproduced": the row shows them, labelled, beside the 95% ones, so its verdict can be checked.
    def wider_text(wider, scale: float = 1.0, decimals: int | None = None) -> str:
        return "" if wider is None else ", " + fmt_ci(scale * wider[0], scale * wider[1], f"{wider[2]} CI",
                                                      decimals=decimals)

    # a fraction with three decimals, like F_mem beside it and in every table of the report (a
    # difference of two fractions of n samples moves in steps of 1/n: 0.002 at n = 500)
    def mem_ci_text(ci, wider=None) -> str:
        return fmt_ci(*ci, "ΔF_mem 95% CI", decimals=3) + wider_text(wider, 1.0, 3)

    def fd_ci_text(ci, name: str, what: str = "ΔFD 95% CI", base: str = "plain FM", wider=None) -> str:
        # a narrow interval can exclude 0 for a change of 0.03% of FD: the size sits beside it
        base_fd = float(value.loc[base, fd_name])
        change = percent_of(float(value.loc[name, fd_name]) - base_fd, base_fd)
        return f"{fmt_ci(*ci, what)}{wider_text(wider)}, {change} of {'τ=0.6' if base == 'balanced' else base}'s FD"

    def fd_size_note(ci, name: str) -> str:
        # an FD interval that decides nothing (n ≤ D) rules nothing out either
        return "" if fd_undecided else paper_size_note(ci, name, "FD", float(fm_fd))

    # the paper's F_mem percentages are written as fractions (37.34% as 0.3734), as F_mem is everywhere in the report
    (fd_ci, mem_ci) = delta("launch only")
    claims.append(Claim("shaping", "Launch-only KTS improves quality", "FID 16.68 → 11.27 (CelebA-32)",
                        ours("launch only"), n, fd_ci_text(fd_ci, "launch only"),
                        fd_verdict(launch_only_verdict(fd_ci)), "paired basic bootstrap of the FD difference; "
                        "reproduced when its 95% CI lies below 0" + undecided_note
                        + fd_size_note(fd_ci, "launch only"), undecided_detail))
    (fd_ci, mem_ci) = delta("landing only")
    nothing_copied = not np.asarray(memorized["plain FM"]).any()  # no memorization to reduce
    claims.append(Claim("shaping", "Landing-only KTS reduces memorization", "F_mem 0.3734 → 0.1936 (CelebA-32)",
                        ours("landing only"), n, mem_ci_text(mem_ci),
                        "not measured" if nothing_copied else landing_only_memorization_verdict(mem_ci),
                        "paired percentile bootstrap of the F_mem difference; reproduced when its 95% CI lies below 0"
                        + ("; not measured here: under plain FM the memorizing net copies none of its "
                           "samples, so there is no memorization to reduce" if nothing_copied
                           else paper_size_note(mem_ci, "landing only", "F_mem", fm_fd))))
    claims.append(Claim("shaping", "Landing-only KTS costs quality", "FID 16.68 → 86.56 (CelebA-32)",
                        ours("landing only"), n, fd_ci_text(fd_ci, "landing only"),
                        fd_verdict(landing_only_quality_verdict(fd_ci)), "paired basic bootstrap of the FD difference; "
                        "reproduced when its 95% CI lies above 0" + undecided_note
                        + fd_size_note(fd_ci, "landing only"), undecided_detail))
    (fd_ci, mem_ci) = delta("balanced")
    parts = 2  # ΔFD and ΔF_mem: either can fail the claim
    tail = 0.025 / parts
    against = delta("balanced", (tail, 1 - tail))
    level = bonferroni_level(parts)
    claims.append(Claim("shaping", "Balanced KTS improves quality and reduces memorization",
                        "FID 16.68 → 14.35, F_mem 0.3734 → 0.3122 (CelebA-32)", ours("balanced"), n,
                        f"{fd_ci_text(fd_ci, 'balanced', wider=(*against[0], level))}; "
                        f"{mem_ci_text(mem_ci, wider=(*against[1], level))}",
                        _balanced(fd_ci, mem_ci, against, fd_undecided),
                        "paired bootstrap (basic for ΔFD, percentile for ΔF_mem); reproduced when both 95% CIs lie "
                        f"below 0, not reproduced when either's {level} CI (Bonferroni over the {parts}) lies above 0"
                        + (undecided_note + "; only the F_mem part can still read not reproduced"
                           if fd_undecided else ""),
                        undecided_detail))
    taus = {0.2: "balanced τ=0.2", 0.4: "balanced τ=0.4", 0.6: "balanced", 0.8: "balanced τ=0.8"}
    tau_fd = {tau: float(value.loc[name, fd_name]) for tau, name in taus.items()}
    best_tau = min(tau_fd, key=tau_fd.get)
    others = [tau for tau in taus if tau != 0.6]
    tau_deltas = np.stack([paired_fd_delta("balanced", taus[tau]) for tau in others])
    tau_verdict, low, high = all_worse_than(tau_deltas)
    level = bonferroni_level(len(others))
    shown = "; ".join(fd_ci_text((lo, hi), taus[tau], f"τ={tau}", base="balanced")
                      for tau, lo, hi in zip(others, low, high))
    # the intervals "not reproduced" reads, shown so the verdict can be checked (under the table: the cell ran long)
    deciding = "; ".join(fmt_ci(lo, hi, f"τ={tau}") for tau, lo, hi in zip(others, *bonferroni_intervals(tau_deltas)))
    claims.append(Claim("shaping", "τ_split = 0.6 gives the best quality",
                        "FID 60.31 / 48.58 / 14.35 / 21.07 for τ = 0.2 / 0.4 / 0.6 / 0.8",
                        f"{fd_name} " + " / ".join(fmt_significant(v) for v in tau_fd.values())
                        + f" (best τ = {best_tau})", n,
                        f"ΔFD τ − τ=0.6, 95% CI: {shown}", fd_verdict(tau_verdict),
                        "paired basic bootstrap; reproduced when τ = 0.6 beats every other τ (each ΔFD 95% CI above "
                        f"0), not reproduced when another τ is better (its {level} CI, Bonferroni over the "
                        f"{len(others)}, below 0)"
                        + undecided_note,
                        f"the {level} CIs of ΔFD τ − τ=0.6 (Bonferroni over the {len(others)}), which \"not "
                        f"reproduced\" reads: {deciding}" + (f"; {undecided_detail}" if fd_undecided else "")))
    return claims


def _balanced(fd_ci: Interval, mem_ci: Interval, against: tuple[Interval, Interval], fd_undecided: bool) -> str:
    """:func:`balanced_verdict`, or, when FD cannot decide, the F_mem part alone: it can still fail
    the claim (both must hold), never make it."""
    if not fd_undecided:
        return balanced_verdict(fd_ci, mem_ci, against=against)
    return "not reproduced" if verdict_from_interval(*against[1], -1) == "not reproduced" else "inconclusive"


def bootstrap_fd(feats: np.ndarray, reference: FrechetReference, boot: np.ndarray) -> np.ndarray:
    """(R,) Fréchet distances to ``reference`` of the resamples ``feats[boot[r]]``; the same
    ``boot`` for two settings pairs their resamples."""
    return np.array([fd_to_reference(feats[idx], reference) for idx in boot])


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
