"""Study 1, energy and semantics: do higher-KPE samples carry stronger semantics?

The paper (ImageNet-256, SiT) finds CLIP score 21.9 → 24.6 and CLIP margin 5.7 → 8.9 from the
low- to the high-KPE group. Here the generalising model is sampled, each sample's KPE is measured
on the fly, and a classifier trained on the same data judges its semantic strength (logit margin of
the predicted class). Low vs high groups by KPE quantile, Spearman ρ with a bootstrap CI.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from ..metrics.semantics import classifier_margin
from ..metrics.stats import Correlation, group_size, compare_groups, spearman
from ..sampling.shaping import KTS
from .assets import Assets
from .config import SemanticsConfig
from .output import P_FORMAT, StudyOutput, display_note, for_display, image_range, judge_text
from .samples import energy_frame, sampled, start_noise, straight_line_energy
from .verdicts import fmt_ci, link_in_words, verdict_from_interval
from .workspace import Workspace


def general_samples(cfg: SemanticsConfig, assets: Assets, ws: Workspace, asset_key: str, shaping: KTS | None = None):
    """Samples of the generalising model for the semantics, support and Goldilocks studies and the
    sample-quality check (cached, and held by ``ws`` once read: every one of them reads the plain
    run; they share its tensors, so none may modify them in place)."""
    return sampled(
        ws, "general-fm" if shaping is None else "general-kts",
        {"assets": asset_key, "net": "general", "shaping": None if shaping is None else asdict(shaping)},
        assets.general, range(cfg.seed_start, cfg.seed_start + cfg.n_samples), tuple(assets.train.shape[1:]),
        device=str(next(assets.general.parameters()).device), keep=shaping is None,
        steps=cfg.steps, solver=cfg.solver, shaping=shaping,
    )


def semantics_verdict(rho: Correlation) -> str:
    """Higher-KPE samples carry stronger semantics: the paper expects ρ(KPE, semantic strength) > 0
    (CLIP margin 5.7 → 8.9 from the low- to the high-KPE group)."""
    return verdict_from_interval(rho.ci_low, rho.ci_high, +1)


def run_semantics(cfg: SemanticsConfig, assets: Assets, ws: Workspace, asset_key: str) -> StudyOutput:
    """Study 1: does a higher-KPE sample carry stronger semantics?

    Samples the generalising net (plain FM and KTS with its defaults, the same seeds; cached in
    ``ws``) and, when the data set has labels, judges each plain-FM sample by the classifier's
    logit margin: the claim's verdict reads the 95% bootstrap CI of Spearman ρ(KPE, margin); the
    low and high ``cfg.quantile`` KPE groups are compared too (Cohen's d with its interval).
    Without labels the claim is "not measured" and only the energy figures are drawn.

    Args:
        cfg: the study's settings (samples, seeds, steps, quantile, bootstrap resamples).
        assets: data, judging classifier and nets from :func:`~kinetic_fm.studies.assets.load_assets`.
        ws: the workspace caching the samples.
        asset_key: ``config_hash`` of ``cfg.assets.sample_settings()``, part of every cached run's key,
            so samples are redrawn when the data or nets change.

    Returns:
        StudyOutput "semantics": the table ``general_samples`` (one row per seed: KPE and energies,
        plus margin, confidence and predicted class when judged), one claim and one section.
    """
    from .figures import (KPE_LABEL, PLAIN_KPE_LABEL, energy_profile_figure, histogram_figure, sample_grid_figure,
                          scatter_figure)
    from .report import Claim, Section

    out = StudyOutput("semantics")
    fm = general_samples(cfg, assets, ws, asset_key)
    kts = general_samples(cfg, assets, ws, asset_key, KTS())
    x = image_range(fm["x"], assets)
    kpe = fm["kpe"].numpy()
    frame = energy_frame(fm)
    section = Section("Energy and semantics")
    section.figures += [
        energy_profile_figure("energy_profile_general", "Kinetic power ½η²‖v‖² along the trajectories of the "
                              "generalising model: mean and 10–90% band, plain FM vs KTS (α0 = β0 = 0.01, τ = 0.6).",
                              {"plain FM": (fm["times"].numpy(), fm["profile"].numpy()),
                               "KTS": (kts["times"].numpy(), kts["profile"].numpy())}, log_y=True),
        histogram_figure("kpe_histogram_general", "Per-sample KPE of the generalising model, plain FM vs KTS "
                         "(the same seeds).", {"plain FM": kpe, "KTS": kts["kpe"].numpy()}, xlabel=KPE_LABEL),
    ]
    order = np.argsort(kpe)
    shown = min(16, len(order) // 2)
    low, high = order[:shown], order[-shown:]
    section.figures.append(sample_grid_figure(
        "samples_by_kpe", f"The {shown} samples of the generalising model with the lowest and the {shown} with the "
        "highest KPE (plain FM), the KPE range of each group in its title." + display_note(assets),
        {f"lowest KPE{_range(kpe[low])}": for_display(x[low], assets).numpy(),
         f"highest KPE{_range(kpe[high])}": for_display(x[high], assets).numpy()}))

    if assets.classifier is None:
        section.text = ("This data set has no labels, so no classifier judges semantic strength; the energy "
                        "figures are shown for reference.")
        out.claims.append(Claim("semantics", "Higher-KPE samples carry stronger semantics",
                                "CLIP margin 5.7 → 8.9 (low → high KPE, ImageNet-256)", "not measured (no labels)",
                                len(kpe), "", "not measured", "the data set has no class labels"))
        out.tables["general_samples"] = frame
        out.sections.append(section)
        return out

    ws.say(f"semantics: judging {len(x)} samples, Spearman ρ with {cfg.bootstrap} resamples")
    judged = classifier_margin(assets.classifier, x.to(next(assets.classifier.parameters()).device))
    margin = judged.margin.cpu().numpy()
    frame["margin"] = margin
    frame["confidence"] = judged.confidence.cpu().numpy()
    frame["predicted"] = judged.predicted.cpu().numpy()
    rho = spearman(kpe, margin, bootstrap=cfg.bootstrap, permutations=cfg.bootstrap, seed=cfg.seed_start)
    groups = compare_groups(margin, kpe, quantile=cfg.quantile)
    conf_groups = compare_groups(frame["confidence"].to_numpy(), kpe, quantile=cfg.quantile)
    d_ci = cohens_d_interval(margin, kpe, cfg.quantile, cfg.bootstrap, cfg.seed_start)
    conf_d_ci = cohens_d_interval(frame["confidence"].to_numpy(), kpe, cfg.quantile, cfg.bootstrap, cfg.seed_start)
    verdict = semantics_verdict(rho)
    q = f"{cfg.quantile:.0%}"
    out.claims.append(Claim(
        "semantics", "Higher-KPE samples carry stronger semantics",
        "CLIP margin 5.7 → 8.9, CLIP score 21.9 → 24.6 (low → high KPE group, ImageNet-256)",
        f"{assets.classifier_name} margin {groups.low_mean:.2f} → {groups.high_mean:.2f} (low → high {q} KPE, "
        f"d = {groups.cohens_d:+.2f}, {fmt_ci(*d_ci, 'd 95% CI', decimals=2)}); Spearman ρ = {rho.rho:+.3f}",
        rho.n, fmt_ci(rho.ci_low, rho.ci_high, "ρ 95% CI", decimals=3), verdict,
        f"reproduced when the 95% CI of ρ(KPE, margin) lies above 0, not reproduced when below; "
        f"a {rho.ci_method} bootstrap over the (KPE, margin) pairs; d's CI: a percentile bootstrap of "
        f"{cfg.bootstrap} resamples of the pairs, the groups drawn again in each"))
    import pandas as pd

    # Context, not a claim of the paper: KPE ≥ ½‖x1 − x0‖², and at small D the start's own norm
    # varies enough to drive KPE; the excess over the straight line is free of it
    x0 = start_noise(fm)
    frame["noise_energy"] = (0.5 * x0.reshape(len(x0), -1).pow(2).sum(1)).numpy()
    frame["excess_energy"] = kpe - straight_line_energy(fm).numpy()
    by_noise = spearman(kpe, frame["noise_energy"].to_numpy(), bootstrap=cfg.bootstrap, permutations=0,
                        seed=cfg.seed_start)
    by_excess = spearman(frame["excess_energy"].to_numpy(), margin, bootstrap=cfg.bootstrap,
                         permutations=cfg.bootstrap, seed=cfg.seed_start)
    section.text = (
        f"{len(kpe)} samples of the generalising model ({cfg.solver}, {cfg.steps} steps), judged by "
        f"{judge_text(assets)}. "
        f"Semantic strength is the logit margin of the predicted class. Spearman ρ(KPE, margin) = "
        f"{rho.rho:+.3f}, {rho.confidence:.0%} CI [{rho.ci_low:+.3f}, {rho.ci_high:+.3f}] ({rho.ci_method} "
        f"bootstrap), permutation p = {rho.p_perm:.3g}, n = {rho.n} ({link_in_words(rho.ci_low, rho.ci_high)}; "
        "the paper expects a positive link).\n\n"
        f"Context (not one of the paper's claims): a path's KPE is at least ½‖x1 − x0‖², so it can "
        f"follow the energy ½‖x0‖² of the noise it starts from; here ρ(KPE, ½‖x0‖²) = {by_noise.rho:+.3f} "
        f"(95% CI [{by_noise.ci_low:+.3f}, {by_noise.ci_high:+.3f}]) in D = {x0[0].numel()} "
        f"({link_in_words(by_noise.ci_low, by_noise.ci_high)}). The excess energy "
        f"KPE − ½‖x1 − x0‖² (zero for a straight path at constant speed) against the margin: "
        f"ρ = {by_excess.rho:+.3f} (95% CI [{by_excess.ci_low:+.3f}, {by_excess.ci_high:+.3f}]), "
        f"p_perm = {by_excess.p_perm:.3g} ({link_in_words(by_excess.ci_low, by_excess.ci_high)}). "
        "Per sample: columns `noise_energy` and `excess_energy` of "
        f"`tables/semantics__general_samples.parquet`.")
    # d and its interval as the claim writes them (+0.06 [-0.15, +0.23]), the p-value as the text writes p
    section.formats.update({"Cohen's d": "+.2f", "d CI low": "+.2f", "d CI high": "+.2f", "Welch p": P_FORMAT})
    section.tables.append((f"Low vs high {q} of KPE", pd.DataFrame([
        {"score": "classifier margin", **_group_row(groups, d_ci)},
        {"score": "classifier confidence", **_group_row(conf_groups, conf_d_ci)},
    ])))
    section.figures.insert(0, scatter_figure(
        "kpe_vs_margin", "Per-sample KPE against classifier margin (generalising model, plain FM). The paper "
        "expects the cloud to rise to the right (ρ > 0).", kpe, margin,
        xlabel=PLAIN_KPE_LABEL, ylabel=f"{assets.classifier_name} logit margin",
        annotation=f"Spearman ρ = {rho.rho:+.3f}, 95% CI [{rho.ci_low:+.3f}, {rho.ci_high:+.3f}]"))
    out.tables["general_samples"] = frame
    out.sections.append(section)
    return out


def _group_row(g, d_ci: tuple[float, float]) -> dict[str, Any]:
    return {"low mean": g.low_mean, "low std": g.low_std, "high mean": g.high_mean, "high std": g.high_std,
            "Cohen's d": g.cohens_d, "d CI low": d_ci[0], "d CI high": d_ci[1], "Welch p": g.p_value,
            "n per group": g.n_low}


def cohens_d_interval(score: np.ndarray, by: np.ndarray, quantile: float, resamples: int, seed: int,
                      chunk: int = 256) -> tuple[float, float]:
    """95% percentile bootstrap interval of :func:`~kinetic_fm.metrics.stats.compare_groups`' Cohen's d
    of ``score`` between the low and high ``quantile`` of ``by`` (both (n,)): ``resamples`` resamples of
    the (score, by) pairs (``rng.integers`` of a generator seeded ``seed``, as the shaping study's paired
    intervals), the groups drawn again in each (ties in ``by`` broken by order, as there). Within a
    resample without spread d is ±inf or 0, as compare_groups gives it. (NaN, NaN) without resamples."""
    score, by = np.asarray(score, dtype=np.float64), np.asarray(by, dtype=np.float64)
    n = len(score)
    if resamples < 1:
        return float("nan"), float("nan")
    m = min(group_size(quantile, n), n // 2)  # compare_groups' own rule (0.29 of 50 is 15, not 14)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    d = np.empty(resamples)
    for start in range(0, resamples, chunk):  # (chunk, n) at a time
        idx = index[start:start + chunk]
        order = np.argsort(by[idx], axis=1, kind="stable")
        ranked = np.take_along_axis(score[idx], order, axis=1)
        low, high = ranked[:, :m], ranked[:, -m:]
        difference = high.mean(1) - low.mean(1)
        pooled = np.sqrt(0.5 * (low.var(1, ddof=1) + high.var(1, ddof=1)))
        with np.errstate(divide="ignore", invalid="ignore"):
            d[start:start + chunk] = np.where(pooled > 0, difference / pooled,
                                              np.where(difference != 0, np.copysign(np.inf, difference), 0.0))
    low_end, high_end = np.quantile(d, [0.025, 0.975])
    return float(low_end), float(high_end)


def _range(values: np.ndarray) -> str:
    """", 25.9–29.1" for a panel title; empty for no values."""
    return f", {values.min():.3g}–{values.max():.3g}" if len(values) else ""
