"""Intervals the report gives beside its point values: each Goldilocks quintile's FD, the semantics
groups' Cohen's d and each KTS setting's FD; and the EFM power axis, which no gain acts on."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import linalg

from kinetic_fm.metrics.stats import compare_groups
from kinetic_fm.studies import figures as F
from kinetic_fm.studies.workspace import Workspace

from nets import LinearDrift


def _frechet(x: np.ndarray, ref: np.ndarray) -> float:
    """Float64 Fréchet distance through SciPy's matrix square root (independent of the library's)."""
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    mu_r, sigma_r = ref.mean(0), np.cov(ref, rowvar=False)
    half = linalg.sqrtm(sigma_r).real                   # PSD: its root is accurate where sigma·sigma_r's may not be
    root = linalg.sqrtm(half @ sigma @ half).real
    return float(((mu - mu_r) ** 2).sum() + np.trace(sigma + sigma_r - 2 * root))


def _basic(point: float, resampled: np.ndarray) -> tuple[float, float]:
    return 2 * point - np.quantile(resampled, 0.975), 2 * point - np.quantile(resampled, 0.025)


def _jackknife(x: np.ndarray, ref: np.ndarray, groups: int = 10) -> tuple[float, float]:
    """The delete-a-group jackknife interval by its definition: group k = rows k, k + g, ... of both
    sets; θ_J = g θ̂ − (g − 1) mean FD_(−k); θ_J ± t(0.975, g − 1) · se_J, cut at 0."""
    from scipy import stats

    keep = [(np.arange(len(x)) % groups != k, np.arange(len(ref)) % groups != k) for k in range(groups)]
    left = np.array([_frechet(x[kx], ref[kr]) for kx, kr in keep])
    corrected = groups * _frechet(x, ref) - (groups - 1) * left.mean()
    se = np.sqrt((groups - 1) / groups * ((left - left.mean()) ** 2).sum())
    t = stats.t.ppf(0.975, groups - 1)
    return max(corrected - t * se, 0.0), max(corrected + t * se, 0.0)


def _bar_intervals(feats: np.ndarray, bins: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Goldilocks bars' intervals as the memorization study makes them."""
    from kinetic_fm.studies.memorization import quintile_replicates
    from kinetic_fm.studies.output import jackknife_reference, replicate_intervals

    return replicate_intervals(quintile_replicates(feats, bins, ref, jackknife_reference(ref)))


def test_quintile_intervals_are_jackknife_intervals_of_each_quintiles_own_rows():
    rng = np.random.default_rng(0)
    feats, ref = rng.normal(size=(100, 3)), rng.normal(size=(80, 3))
    feats[80:] *= 3.0                                   # Q5 far from the reference, and more spread
    bins = np.arange(100) * 5 // 100
    low, high = _bar_intervals(feats, bins, ref)
    for q in range(5):
        np.testing.assert_allclose([low[q], high[q]], _jackknife(feats[bins == q], ref), rtol=1e-8, atol=1e-12)
    assert high[4] - low[4] > 3 * (high[0] - low[0])     # the spread quintile is the uncertain one
    # a quintile of one row has no FD and no interval
    lonely = np.where(np.arange(100) == 99, 4, np.minimum(bins, 3))
    low, high = _bar_intervals(feats, lonely, ref)
    assert np.isnan([low[4], high[4]]).all() and np.isfinite(low[:4]).all()
    # no more rows than features (3) once a tenth is out: the FD is mostly bias, no interval
    few = np.where(np.arange(100) < 4, 0, np.maximum(bins, 1))
    low, high = _bar_intervals(feats, few, ref)
    assert np.isnan([low[0], high[0]]).all() and np.isfinite(low[1:]).all()
    assert np.isnan(_bar_intervals(feats, bins, ref[:9])).all()          # fewer rows than groups
    assert np.isfinite(_bar_intervals(feats, bins, ref[:10])[0]).all()   # 10 − 1 rows > 3 features


def test_jackknife_fd_intervals_never_leave_the_non_negative_numbers():
    # the bias-corrected estimate of an FD near 0 can be negative, and its upper end too (3 of 200 sets
    # of 30 rows of one law in 4 dimensions): no FD is, so both ends are cut at 0 (then [0, 0])
    from kinetic_fm.studies.output import jackknife_fd_intervals

    rng = np.random.default_rng(3)
    ends = np.array([np.ravel(jackknife_fd_intervals([rng.normal(size=(30, 4))], rng.normal(size=(30, 4))))
                     for _ in range(200)])
    assert (ends >= 0).all() and (ends[:, 0] <= ends[:, 1]).all()
    assert ((ends == 0).all(axis=1)).sum() >= 1               # the case happened, and reads [0, 0]


def test_replicate_fds_are_the_bias_corrected_fds_uncut_and_nan_where_too_few_rows():
    # g·θ̂ − (g − 1)·mean_k FD_(−k) by its definition; not cut at 0 (the Goldilocks interval takes
    # differences of them), NaN for a set or reference too small for the jackknife
    from kinetic_fm.studies.output import jackknife_reference, jackknife_replicates, replicate_fds

    def jackknife_fds(sets, ref):
        return replicate_fds(jackknife_replicates(sets, ref))

    rng = np.random.default_rng(7)
    ref = rng.normal(size=(90, 4))
    sets = [rng.normal(size=(60, 4)) * 1.5 + 0.3, rng.normal(size=(40, 4)), rng.normal(size=(6, 4))]
    keep = [(np.arange(len(ref)) % 10 != k) for k in range(10)]

    def corrected(x):
        left = [_frechet(x[np.arange(len(x)) % 10 != k], ref[keep[k]]) for k in range(10)]
        return 10 * _frechet(x, ref) - 9 * np.mean(left)

    got = jackknife_fds(sets, ref)
    np.testing.assert_allclose(got[:2], [corrected(sets[0]), corrected(sets[1])], rtol=1e-8, atol=1e-12)
    assert got[1] < 0                                   # one law, 40 rows: the corrected FD went below 0
    assert np.isnan(got[2]) and np.isnan(jackknife_fds(sets, ref[:8])).all()
    # fits shared between calls give the same FDs, and fits of another reference are refused
    assert np.array_equal(replicate_fds(jackknife_replicates(sets, ref, fits=jackknife_reference(ref))), got,
                          equal_nan=True)
    with pytest.raises(ValueError, match=r"fits: made from reference rows of shape \(80, 4\), but ref_rows has "
                                         r"shape \(90, 4\)"):
        jackknife_replicates(sets, ref, fits=jackknife_reference(ref[:80]))


def _true_frechet(mu1, s1, mu2, s2) -> float:
    """The Fréchet distance of two Gaussians in closed form (SciPy's sqrtm, float64; round-off below 0 cut)."""
    root = linalg.sqrtm(s1).real
    return max(float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(root @ s2 @ root).real)), 0.0)


def test_quintile_intervals_cover_a_known_fd_where_the_basic_bootstrap_did_not():
    # Gaussian quintiles whose FD to the reference's law is known, at the report's ratio of rows to
    # features (a quintile 1.5 D rows, the reference 2.25 D): the basic bootstrap of the quintile's rows,
    # the reference fixed, corrected only the quintile's part of the estimator's bias (the report's
    # whiskers until now: its intervals lay above the true FD); the jackknife corrects both parts
    dim, n, m, repeats, resamples = 32, 48, 72, 20, 40
    rng = np.random.default_rng(0)
    spectrum = 1.0 / np.arange(1, dim + 1)
    scales, shifts = np.array([1.0, 1.1, 1.2, 1.3, 1.5]), np.array([0.0, 0.1, 0.2, 0.4, 0.8]) / np.sqrt(dim)
    truth = np.array([_true_frechet(np.full(dim, shifts[q]), scales[q] ** 2 * np.diag(spectrum), np.zeros(dim),
                                    np.diag(spectrum)) for q in range(5)])
    bins = np.repeat(np.arange(5), n)
    covered = {"jackknife": 0, "basic": 0}
    for _ in range(repeats):
        feats = np.concatenate([rng.normal(size=(n, dim)) * np.sqrt(spectrum) * scales[q] + shifts[q]
                                for q in range(5)])
        ref = rng.normal(size=(m, dim)) * np.sqrt(spectrum)
        low, high = _bar_intervals(feats, bins, ref)
        covered["jackknife"] += int(((low <= truth) & (truth <= high)).sum())
        half = linalg.sqrtm(np.cov(ref, rowvar=False)).real      # the old interval, by brute force

        def fd(x):
            s = np.cov(x, rowvar=False)
            return float(((x.mean(0) - ref.mean(0)) ** 2).sum() + np.trace(s + np.cov(ref, rowvar=False))
                         - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(half @ s @ half), 0, None)).sum())
        for q in range(5):
            x = feats[bins == q]
            old_low, old_high = _basic(fd(x), np.array([fd(x[rng.integers(0, n, n)]) for _ in range(resamples)]))
            covered["basic"] += int(old_low <= truth[q] <= old_high)
    share = {k: v / (5 * repeats) for k, v in covered.items()}
    assert share["jackknife"] >= 0.88, share            # 95% intervals: 0.99 here
    assert share["basic"] <= 0.6, share                 # 0.33 here


def _axes_of(monkeypatch) -> dict:
    """figure name -> its axes as rendered (kept, not cleared)."""
    drawn, render = {}, F._render

    def keep(fig, name, caption):
        drawn[name] = SimpleNamespace(axes=list(fig.axes), caption=caption,
                                      ylabel=[ax.get_ylabel() for ax in fig.axes],
                                      segments=[[seg.copy() for c in ax.collections
                                                 for seg in getattr(c, "get_segments", lambda: [])()]
                                                for ax in fig.axes],
                                      lines=[{line.get_label(): np.asarray(line.get_ydata(), float)
                                              for line in ax.lines} for ax in fig.axes],
                                      bars=[[p.get_height() for p in ax.patches] for ax in fig.axes],
                                      legend=[[t.get_text() for t in ax.get_legend().get_texts()]
                                              if ax.get_legend() else [] for ax in fig.axes])
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", keep)
    return drawn


def _whiskers(segments) -> dict[float, tuple[float, float]]:
    """x position -> (low, high) of each vertical error bar among line segments."""
    return {float(s[0, 0]): (float(min(s[:, 1])), float(max(s[:, 1])))
            for s in segments if len(s) == 2 and s[0, 0] == s[1, 0] and s[0, 1] != s[1, 1]}


def _goldilocks_case():
    """Assets of 2 × 2 images judged on their pixels (D = 4) and a config of 50 samples: quintiles of
    10 rows, more than D, so the Goldilocks tests run (and with them the claim's jackknife point)."""
    from kinetic_fm.studies.config import SemanticsConfig

    gen = torch.Generator().manual_seed(1)
    train = torch.rand(30, 1, 2, 2, generator=gen) - 0.5
    heldout = torch.rand(40, 1, 2, 2, generator=gen) - 0.5
    flat = lambda x: x.flatten(1).double()  # noqa: E731  (the stand-in judge's features)
    assets = SimpleNamespace(train=train, heldout=heldout, general=LinearDrift(4), classifier_name="flat", mean=None,
                             value_range=lambda: (-0.5, 0.5), features=flat,
                             sample_features=lambda x: flat(x.clamp(-0.5, 0.5)), heldout_features=lambda: flat(heldout))
    return assets, SemanticsConfig(n_samples=50, steps=4, bootstrap=20, seed_start=5)


def test_goldilocks_bars_carry_each_quintiles_interval_and_the_row_its_per_quintile_n(tmp_path, monkeypatch):
    from kinetic_fm.studies.memorization import _goldilocks, quintile_bins
    from kinetic_fm.studies.output import StudyOutput

    assets, cfg = _goldilocks_case()
    drawn = _axes_of(monkeypatch)
    section, claim = _goldilocks(cfg, 30, assets, Workspace(tmp_path), "fake", StudyOutput("memorization"))
    table = section.tables[0][1]
    assert list(table.columns[:5]) == ["KPE quintile", "KPE from", "KPE to", "n", "FD-flat"]  # unchanged
    low, high, fd = (table[c].to_numpy() for c in ("FD-flat CI low", "FD-flat CI high", "FD-flat"))
    assert (table["n"] == 10).all() and np.isfinite(low).all() and (low < high).all()
    # the interval is the quintile's own jackknife interval, its rows and the held-out reference's
    from kinetic_fm.studies.output import image_range
    from kinetic_fm.studies.semantics import general_samples

    samples = general_samples(cfg, assets, Workspace(tmp_path), "fake")
    feats = image_range(samples["x"], assets).flatten(1).double().numpy()
    ref = assets.heldout.flatten(1).double().numpy()
    bins = quintile_bins(samples["kpe"].numpy())[1]
    for q in range(5):
        assert fd[q] == pytest.approx(_frechet(feats[bins == q], ref), rel=1e-8)
        np.testing.assert_allclose([low[q], high[q]], _jackknife(feats[bins == q], ref), rtol=1e-6, atol=1e-9)
    # drawn as whiskers on the bars, and the caption and the claim row say how many samples each bar holds
    bars = drawn["goldilocks"]
    whiskers = _whiskers(bars.segments[0])
    assert sorted(whiskers) == [0.0, 1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose([whiskers[q] for q in range(5)], np.stack([low, high], 1), rtol=1e-9)
    assert "each bar from 10 samples" in bars.caption
    # what the whisker is: the FD interval the report's Terms define once (a jackknife interval about the
    # bias-corrected FD, cut at 0), which may lie wholly below the bar's plain FD; the caption points there
    assert "each quintile's own 95% FD interval (see FD interval in Terms" in bars.caption
    assert "below the bar" in bars.caption and "delete-a-group" not in bars.caption
    assert "No interval per bar" not in bars.caption
    assert claim.n == 50 and "), each from 10 of the 50 samples" in claim.ours


def _corrected(x: np.ndarray, ref: np.ndarray, groups: int = 10) -> float:
    """The jackknife's bias-corrected FD by its definition, g θ̂ − (g − 1) mean FD_(−k), cut at 0 as its
    interval's ends are (:func:`_jackknife`)."""
    left = [_frechet(x[np.arange(len(x)) % groups != k], ref[np.arange(len(ref)) % groups != k])
            for k in range(groups)]
    return max(groups * _frechet(x, ref) - (groups - 1) * float(np.mean(left)), 0.0)


def _marks_its_interval(drawn, column: str, corrected: np.ndarray, plain: np.ndarray, low: np.ndarray,
                        high: np.ndarray, plain_label: str) -> None:
    """The FD figure ``drawn`` marks each row's bias-corrected FD (the table's ``column``) with its interval
    about it, draws the plain FD beside it (named ``plain_label``) and names both in its legend."""
    (marks,) = [y for label, y in drawn.lines[0].items() if column in label]
    np.testing.assert_allclose(marks, corrected, rtol=1e-12)
    whiskers = _whiskers(drawn.segments[0])
    np.testing.assert_allclose([whiskers[q] for q in range(len(low))], np.stack([low, high], 1), rtol=1e-9)
    assert ((low <= marks) & (marks <= high)).all()                  # the point lies inside its own whisker
    np.testing.assert_allclose(drawn.bars[0] or drawn.lines[0][plain_label], plain, rtol=1e-12)  # bars or dots
    legend = drawn.legend[0]
    assert any(column in text and "95%" in text for text in legend) and plain_label in legend


def test_goldilocks_marks_the_bias_corrected_fd_its_whisker_is_about_and_its_table_holds_it(tmp_path, monkeypatch):
    # the quick run's Q3: a bar at the plain FD 64.9 with a whisker from 0 to 86.2, the interval about the
    # bias-corrected FD, which no table or figure showed: the bar read as "FD possibly 0"
    from kinetic_fm.studies.memorization import _goldilocks, quintile_bins
    from kinetic_fm.studies.output import StudyOutput, image_range
    from kinetic_fm.studies.semantics import general_samples

    assets, cfg = _goldilocks_case()
    drawn = _axes_of(monkeypatch)
    out = StudyOutput("memorization")
    section, _ = _goldilocks(cfg, 30, assets, Workspace(tmp_path), "fake", out)
    table = section.tables[0][1]
    assert list(table.columns[-3:]) == ["FD-flat bias-corrected", "FD-flat CI low", "FD-flat CI high"]
    samples = general_samples(cfg, assets, Workspace(tmp_path), "fake")
    feats = image_range(samples["x"], assets).flatten(1).double().numpy()
    ref = assets.heldout.flatten(1).double().numpy()
    bins = quintile_bins(samples["kpe"].numpy())[1]
    corrected = table["FD-flat bias-corrected"].to_numpy()
    # g θ̂ − (g − 1) mean_k FD_k amplifies the FDs' round-off about 2g-fold (1.8e-8 on NumPy 1.24's eigensolver)
    np.testing.assert_allclose(corrected, [_corrected(feats[bins == q], ref) for q in range(5)], rtol=1e-7)
    assert out.tables["goldilocks"]["FD-flat bias-corrected"].equals(table["FD-flat bias-corrected"])
    _marks_its_interval(drawn["goldilocks"], "FD-flat bias-corrected", corrected, table["FD-flat"].to_numpy(),
                        table["FD-flat CI low"].to_numpy(), table["FD-flat CI high"].to_numpy(),
                        "FD-flat of the quintile's rows (uncorrected)")
    assert "'FD-flat bias-corrected' column" in drawn["goldilocks"].caption


def _shaping_case():
    """30 training images of (1, 2, 2) in [-0.5, 0.5), assets whose features are the flat pixels, and a shaping
    config of 24 samples, 4 and 6 steps, 10 bootstrap draws."""
    from kinetic_fm.studies.config import ShapingConfig

    gen = torch.Generator().manual_seed(3)
    train = torch.rand(30, 1, 2, 2, generator=gen) - 0.5
    assets = SimpleNamespace(train=train, memorizer_train=train[:10], memorizer=LinearDrift(4), classifier_name="flat",
                             mean=None, value_range=lambda: (-0.5, 0.5), features=lambda x: x.flatten(1).double(),
                             train_features=lambda: train.flatten(1).double())
    return train, assets, ShapingConfig(n_samples=24, steps=4, more_steps=6, bootstrap=10, seed_start=5)


def test_shaping_fd_marks_the_bias_corrected_fd_its_whisker_is_about_and_its_table_holds_it(tmp_path, monkeypatch):
    # as the Goldilocks bars: each dot was the plain FD, well above the middle of its whisker
    from kinetic_fm.studies import shaping

    train, assets, cfg = _shaping_case()
    drawn = _axes_of(monkeypatch)
    judged = []                                                      # each setting's sample features, in order
    real = shaping.jackknife_replicates
    monkeypatch.setattr(shaping, "jackknife_replicates",
                        lambda sets, *args, **kwargs: judged.extend(sets) or real(sets, *args, **kwargs))
    out = shaping.run_shaping(cfg, assets, Workspace(tmp_path), "fake", progress=False)
    table = out.tables["shaping_grid"]
    at = list(table.columns).index("FD-flat")
    assert list(table.columns[at:at + 4]) == ["FD-flat", "FD-flat bias-corrected", "FD-flat CI low", "FD-flat CI high"]
    corrected = table["FD-flat bias-corrected"].to_numpy()
    ref = train.flatten(1).double().numpy()
    assert len(judged) == len(table)                                 # by the definition, not the study's helpers
    np.testing.assert_allclose(corrected, [_corrected(x, ref) for x in judged], rtol=1e-7)   # as the Goldilocks test
    _marks_its_interval(drawn["shaping_fd"], "FD-flat bias-corrected", corrected, table["FD-flat"].to_numpy(),
                        table["FD-flat CI low"].to_numpy(), table["FD-flat CI high"].to_numpy(),
                        "FD-flat of the samples (uncorrected)")
    assert "'FD-flat bias-corrected' column" in drawn["shaping_fd"].caption


def test_goldilocks_kpe_bars_and_the_control_tables_kpe_line_are_each_kpe_quintiles_fd(tmp_path):
    # both read the bars' quintile FDs: checked against each quintile's FD computed here, bins and
    # reference fit made apart from _goldilocks (the two tables once compared one column with its copy)
    from kinetic_fm.studies.memorization import _goldilocks, quintile_bins
    from kinetic_fm.studies.output import StudyOutput, fd_to_reference, feature_reference, image_range
    from kinetic_fm.studies.semantics import general_samples

    assets, cfg = _goldilocks_case()
    out = StudyOutput("memorization")
    _goldilocks(cfg, 30, assets, Workspace(tmp_path), "fake", out)
    samples = general_samples(cfg, assets, Workspace(tmp_path), "fake")
    feats = image_range(samples["x"], assets).flatten(1).double().numpy()
    reference = feature_reference(assets.heldout.flatten(1).double().numpy())
    bins = quintile_bins(samples["kpe"].numpy())[1]
    expected = [fd_to_reference(feats[bins == q], reference) for q in range(5)]
    np.testing.assert_allclose(out.tables["goldilocks"]["FD-flat"].to_numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(out.tables["goldilocks_control"]["KPE"].to_numpy(), expected, rtol=1e-12)


def test_the_goldilocks_section_rendered_alone_defines_the_fd_interval_its_caption_points_to(tmp_path):
    # its caption says "see FD interval in Terms": outside kfm reproduce no Terms paragraph was written
    from kinetic_fm.studies.memorization import _goldilocks
    from kinetic_fm.studies.output import StudyOutput, jackknife_text
    from kinetic_fm.studies.report import write_report

    assets, cfg = _goldilocks_case()
    section, _ = _goldilocks(cfg, 30, assets, Workspace(tmp_path / "ws"), "fake", StudyOutput("memorization"))
    md, html_path = write_report(tmp_path / "alone", title="t", intro="", claims=[], sections=[section], meta={})
    text = md.read_text(encoding="utf-8")
    assert f"**Terms.** FD interval: {jackknife_text()}." in text
    heading, definition = text.index("## The Goldilocks picture"), text.index(jackknife_text())
    assert heading < definition < text.index("see FD interval in Terms")
    assert html_path.read_text(encoding="utf-8").count("delete-a-group jackknife interval (10 groups") == 1


def test_goldilocks_jackknifes_each_quintile_once_and_its_numbers_match_the_separate_calls(tmp_path, monkeypatch):
    # the bars' intervals and the claim's jackknife point both read the KPE quintiles' delete-a-group
    # FDs: computed once and passed on, each of the 5 KPE and 5 ‖x1‖² quintiles takes 1 + 10 FDs
    # (the jackknife's, counted in output's namespace; memorization's own FDs are not counted)
    from kinetic_fm.studies import memorization as M
    from kinetic_fm.studies import output
    from kinetic_fm.studies.output import StudyOutput, jackknife_fd_intervals

    assets, cfg = _goldilocks_case()
    _axes_of(monkeypatch)
    fd_calls = []
    fd_to_reference = output.fd_to_reference
    monkeypatch.setattr(output, "fd_to_reference", lambda x, ref: fd_calls.append(len(x)) or fd_to_reference(x, ref))
    tested = []
    goldilocks_tests = M.goldilocks_tests

    def recorded(*args, **kwargs):
        tested.append((args, goldilocks_tests(*args, **kwargs)))
        return tested[-1][1]

    monkeypatch.setattr(M, "goldilocks_tests", recorded)
    section, claim = M._goldilocks(cfg, 30, assets, Workspace(tmp_path), "fake", StudyOutput("memorization"))
    assert len(tested) == 1 and np.isfinite(tested[0][1]["beyond_low"])    # the tests ran, jackknife point too
    assert len(fd_calls) == 10 * (1 + 10)
    # the same numbers, to the bit, as each function computing its own jackknife
    monkeypatch.setattr(output, "fd_to_reference", fd_to_reference)
    (feats, bins, control_bins, ref, resamples, seed), got = tested[0][0][:6], tested[0][1]
    assert got == goldilocks_tests(feats, bins, control_bins, ref, resamples, seed)
    table = section.tables[0][1]
    low, high = jackknife_fd_intervals([feats[bins == q] for q in range(5)], ref)
    assert table["FD-flat CI low"].tolist() == low.tolist() and table["FD-flat CI high"].tolist() == high.tolist()


def test_goldilocks_fits_the_reference_jackknife_once_for_both_splits_with_the_same_numbers(tmp_path, monkeypatch):
    # the KPE quintiles and the ‖x1‖² control quintiles are jackknifed against one reference: its
    # full fit and its ten leave-a-group-out fits (11 eigenvalue problems) were made once per split, 22
    from kinetic_fm.studies import memorization as M
    from kinetic_fm.studies import output
    from kinetic_fm.studies.output import StudyOutput

    assets, cfg = _goldilocks_case()
    _axes_of(monkeypatch)
    fitted = []
    feature_reference = output.feature_reference
    monkeypatch.setattr(output, "feature_reference", lambda rows: fitted.append(len(rows)) or feature_reference(rows))
    shared, shared_claim = M._goldilocks(cfg, 30, assets, Workspace(tmp_path / "a"), "fake", StudyOutput("m"))
    assert sorted(fitted) == [36] * 10 + [40]          # 40 held-out rows; each group leaves out 4
    # the same numbers, to the bit, as each split fitting the reference itself (as before)
    replicates = output.jackknife_replicates
    monkeypatch.setattr(M, "jackknife_reference", lambda ref, groups=10: None)
    monkeypatch.setattr(M, "jackknife_replicates", lambda sets, ref, groups=10, fits=None: replicates(sets, ref))
    fitted.clear()
    alone, alone_claim = M._goldilocks(cfg, 30, assets, Workspace(tmp_path / "b"), "fake", StudyOutput("m"))
    assert len(fitted) == 2 * 11 + 2     # and the controls' and the tests' full fits of their own (helper-256)
    assert alone_claim == shared_claim
    for (name, table), (other, expected) in zip(shared.tables, alone.tables):
        assert name == other and table.equals(expected)


def test_quintile_sizes_are_stated_as_a_range_when_they_differ():
    from kinetic_fm.studies.memorization import _quintile_sizes_text

    assert _quintile_sizes_text([200] * 5) == "200 samples"
    assert _quintile_sizes_text([2, 2, 3, 1, 3]) == "1–3 samples"


def test_cohens_d_interval_recomputes_compare_groups_on_each_resample_of_the_pairs():
    from kinetic_fm.studies.semantics import cohens_d_interval

    rng = np.random.default_rng(2)
    by = rng.normal(size=60)
    score = 0.8 * by + rng.normal(size=60)
    low, high = cohens_d_interval(score, by, 0.25, 200, seed=11, chunk=64)    # chunks of 64 != 200
    index = np.random.default_rng(11).integers(0, 60, size=(200, 60))
    d = [compare_groups(score[i], by[i], quantile=0.25).cohens_d for i in index]
    np.testing.assert_allclose([low, high], np.quantile(d, [0.025, 0.975]), rtol=1e-10)
    point = compare_groups(score, by, quantile=0.25).cohens_d
    assert 0 < low < point < high                        # a real link: the interval excludes 0
    assert np.isnan(cohens_d_interval(score, by, 0.25, 0, seed=11)).all()


def test_cohens_d_interval_sizes_its_groups_as_compare_groups_does():
    # 0.29 of 50 is 14.5: compare_groups takes 15 per group (the quantile as written, half up), the
    # interval took floor(0.29 * 50 + 0.5) = 14 (the float product is 14.499999999999998): the CI
    # was of another d than the one it stands beside
    from kinetic_fm.studies.semantics import cohens_d_interval

    rng = np.random.default_rng(4)
    by = rng.normal(size=50)
    score = 0.5 * by + rng.normal(size=50)
    low, high = cohens_d_interval(score, by, 0.29, 40, seed=3)
    index = np.random.default_rng(3).integers(0, 50, size=(40, 50))
    d = [compare_groups(score[i], by[i], quantile=0.29).cohens_d for i in index]
    assert compare_groups(score, by, quantile=0.29).n_low == 15
    np.testing.assert_allclose([low, high], np.quantile(d, [0.025, 0.975]), rtol=1e-10)


def test_semantics_row_and_table_give_ds_interval(tmp_path, monkeypatch):
    from kinetic_fm.studies.config import SemanticsConfig
    from kinetic_fm.studies.semantics import cohens_d_interval, run_semantics

    for kind in ("scatter_figure", "histogram_figure", "energy_profile_figure", "sample_grid_figure"):
        monkeypatch.setattr(F, kind, lambda name, *a, **k: SimpleNamespace(name=name))
    gen = torch.Generator().manual_seed(1)
    assets = SimpleNamespace(train=torch.rand(30, 1, 4, 4, generator=gen) - 0.5, general=LinearDrift(16),
                             classifier=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)),
                             classifier_name="lin3", classifier_accuracy=0.9, mean=None,
                             value_range=lambda: (-0.5, 0.5))
    cfg = SemanticsConfig(n_samples=40, steps=4, bootstrap=50, seed_start=5, quantile=0.25)
    out = run_semantics(cfg, assets, Workspace(tmp_path), "fake")
    frame = out.tables["general_samples"]
    table = out.sections[0].tables[0][1].set_index("score")
    for score, column in (("classifier margin", "margin"), ("classifier confidence", "confidence")):
        expected = cohens_d_interval(frame[column].to_numpy(), frame["kpe"].to_numpy(), 0.25, 50, 5)
        assert (table.loc[score, "d CI low"], table.loc[score, "d CI high"]) == expected
    low, high = table.loc["classifier margin", ["d CI low", "d CI high"]]
    d = table.loc["classifier margin", "Cohen's d"]
    (claim,) = out.claims
    assert f"d = {d:+.2f}, d 95% CI [{low:+.2f}, {high:+.2f}])" in claim.ours
    assert "d's CI: a percentile bootstrap of 50 resamples" in claim.note


def test_jackknife_fd_intervals_are_each_sets_own_interval():
    from kinetic_fm.studies.output import jackknife_fd_intervals

    rng = np.random.default_rng(4)
    ref_rows = rng.normal(size=(300, 3))
    sets = [rng.normal(size=(40, 3)), 2.0 * rng.normal(size=(40, 3))]
    low, high = jackknife_fd_intervals(sets, ref_rows)
    for k, f in enumerate(sets):
        np.testing.assert_allclose([low[k], high[k]], _jackknife(f, ref_rows), rtol=1e-7, atol=1e-12)
    assert high[1] - low[1] > high[0] - low[0]
    # no more rows than features once a tenth is out, in the samples or the reference: no interval
    narrow = [f[:, :1].repeat(36, axis=1) for f in sets]      # 36 features of 40 rows
    assert np.isnan(jackknife_fd_intervals(narrow, rng.normal(size=(300, 36)))).all()
    assert np.isnan(jackknife_fd_intervals(sets, ref_rows[:3])).all()


def test_efm_power_axis_has_no_gain_and_shaped_figures_keep_theirs(monkeypatch):
    drawn = _axes_of(monkeypatch)
    times = np.linspace(0, 1, 5)
    increments = np.ones((3, 4))
    F.energy_profile_figure("plain", "c", {"N = 4": (times, increments)}, shaped=False)
    F.energy_profile_figure("shaped", "c", {"KTS": (times, increments)})
    assert drawn["plain"].ylabel == ["kinetic power  ½‖v‖²"]
    assert drawn["shaped"].ylabel == ["kinetic power  ½η²‖v‖²"]


def test_the_efm_section_draws_its_power_without_a_gain(tmp_path, monkeypatch):
    """The memorization study's EFM figure (η = 1 there) reads ½‖v‖² on its power axis."""
    from kinetic_fm.studies.config import MemorizationConfig
    from kinetic_fm.studies.memorization import _efm_subsets
    from kinetic_fm.studies.output import StudyOutput

    drawn = _axes_of(monkeypatch)
    assets = SimpleNamespace(train=torch.rand(12, 1, 2, 2, generator=torch.Generator().manual_seed(2)))
    cfg = MemorizationConfig(efm_sizes=(4, 8), efm_samples=6, efm_steps=5, seed_start=0)
    section, _ = _efm_subsets(cfg, assets, Workspace(tmp_path), "fake", StudyOutput("memorization"))
    (label,) = drawn["energy_profile_efm"].ylabel
    assert label.startswith("kinetic power  ½‖v‖²") and "η" not in label


def _fits_of(monkeypatch, rows: np.ndarray, *modules) -> list:
    """A list that grows by one each time ``feature_reference`` fits exactly ``rows``, in output's namespace and
    in each of ``modules``' (where they import it by name)."""
    from kinetic_fm.studies import output

    same, fit = [], output.feature_reference

    def counted(given):
        if given.shape == rows.shape and np.array_equal(given, rows):
            same.append(len(given))
        return fit(given)

    for module in (output, *modules):
        if hasattr(module, "feature_reference"):
            monkeypatch.setattr(module, "feature_reference", counted)
    return same


def test_goldilocks_fits_the_full_reference_once_for_its_controls_tests_and_jackknife(tmp_path, monkeypatch):
    # helper-256: the ‖x1‖² control's FDs, its interior-best share and the tests' T each fitted the whole
    # held-out reference again beside the jackknife's full fit, four eigenvalue problems of the same rows
    from kinetic_fm.studies import memorization as M
    from kinetic_fm.studies.output import StudyOutput

    assets, cfg = _goldilocks_case()
    _axes_of(monkeypatch)
    ref = assets.features(assets.heldout).numpy()
    fitted = _fits_of(monkeypatch, ref, M)
    shared, shared_claim = M._goldilocks(cfg, 30, assets, Workspace(tmp_path / "a"), "fake", StudyOutput("m"))
    assert fitted == [40]
    # the same numbers, to the bit, as each part fitting the reference itself
    monkeypatch.setattr(M, "jackknife_reference", lambda rows, groups=10: None)
    fitted.clear()
    alone, alone_claim = M._goldilocks(cfg, 30, assets, Workspace(tmp_path / "b"), "fake", StudyOutput("m"))
    assert len(fitted) >= 4
    assert alone_claim == shared_claim
    for (name, table), (other, expected) in zip(shared.tables, alone.tables):
        assert name == other and table.equals(expected)


def test_shaping_fits_the_training_reference_once_for_its_fds_and_their_jackknife(tmp_path, monkeypatch):
    # helper-256: the settings' FDs and their jackknife intervals each fitted all the training features
    from kinetic_fm.studies import shaping

    train, assets, cfg = _shaping_case()
    _axes_of(monkeypatch)
    ref_rows = train.flatten(1).double().numpy()
    fitted = _fits_of(monkeypatch, ref_rows, shaping)
    shared = shaping.run_shaping(cfg, assets, Workspace(tmp_path / "a"), "fake", progress=False)
    assert fitted == [30]
    assert np.isfinite(shared.tables["shaping_grid"]["FD-flat CI low"]).all()   # the jackknife ran
    monkeypatch.setattr(shaping, "jackknife_reference", lambda rows, groups=10: None)
    fitted.clear()
    alone = shaping.run_shaping(cfg, assets, Workspace(tmp_path / "b"), "fake", progress=False)
    assert fitted == [30, 30]
    assert alone.claims == shared.claims
    assert alone.tables["shaping_grid"].equals(shared.tables["shaping_grid"])
