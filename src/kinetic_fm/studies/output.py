"""What a study hands back: tables (one row per sample or per setting), claims, report sections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..metrics.fidelity import FrechetDistance, FrechetReference
    from .assets import Assets


@dataclass
class StudyOutput:
    name: str
    tables: dict[str, Any] = field(default_factory=dict)  # name -> pandas DataFrame
    claims: list = field(default_factory=list)  # report.Claim
    sections: list = field(default_factory=list)  # report.Section


# table formats (report.Section.formats): a table writes a value as the text and claims beside it do
RHO_FORMAT = "+.3f"      # a Spearman ρ and its interval's ends ("ρ 95% CI [-0.093, +0.033]")
P_FORMAT = ".3g"         # a p-value ("permutation p = 0.685")
FRACTION_FORMAT = ".3f"  # F_mem and its interval's ends ("0.813 (95% Wilson CI [0.765, 0.853])"), in every
#                          study's text and tables and in the paper's figures quoted beside them
#: the KTS grid's column of the mean energy a sample spends from t = 0.6 on; the memorizer table shows its
#: sampler's late energy, the same quantity there, under this label
AFTER_06_COLUMN = "mean KPE after t = 0.6"
FD_FORMAT = "sig3"       # a Fréchet distance: 3 significant digits, no exponent ("122", "1230": fmt_significant)


def fmem_formats(prefix: str = "") -> dict[str, str]:
    """Section formats of the columns "<prefix>F_mem", "<prefix>F_mem CI low" and "<prefix>F_mem CI high"."""
    return {f"{prefix}F_mem{end}": FRACTION_FORMAT for end in ("", " CI low", " CI high")}


def fd_formats(column: str) -> dict[str, str]:
    """Section formats of an FD column ``column`` and of its :func:`corrected_fd_column`, "<column> CI low"
    and "<column> CI high"."""
    return {name: FD_FORMAT for name in (column, *_interval_names(column))}


def _interval_names(column: str) -> tuple[str, str, str]:
    return corrected_fd_column(column), f"{column} CI low", f"{column} CI high"


def fd_interval_columns(column: str, replicates: Sequence[tuple[float, np.ndarray | None]]) -> dict[str, Any]:
    """The columns beside an FD column ``column``, in order: its :func:`corrected_fd_column` (the
    :func:`replicate_points`) and "<column> CI low" and "<column> CI high" (the :func:`replicate_intervals`),
    from the sets' :func:`jackknife_replicates`."""
    return dict(zip(_interval_names(column), (replicate_points(replicates), *replicate_intervals(replicates))))


def corrected_fd_column(column: str) -> str:
    """The column beside an FD column ``column`` holding the bias-corrected FD that its "<column> CI low"
    and "<column> CI high" interval is about (:func:`replicate_points`)."""
    return f"{column} bias-corrected"


def image_range(x: torch.Tensor, assets: Assets) -> torch.Tensor:
    """Clamp generated images to the training data's value range before judging them."""
    return x.clamp(*assets.value_range())


def for_display(x: torch.Tensor, assets: Assets) -> torch.Tensor:
    """Images (B, C, H, W) in the loader's range as they look: with the mean image the loader
    subtracted (``assets.mean``, CelebA's mean face) added back, so centred faces are not drawn
    as washed-out differences clipped to [-1, 1]. For figures only; every metric reads ``x``."""
    return x if assets.mean is None else x + assets.mean.to(x)


def display_note(assets: Assets) -> str:
    """The caption's word on :func:`for_display`: empty unless a mean image is added back."""
    return "" if assets.mean is None else " Images drawn with the data set's mean image added back (display only)."


def clamp_text(assets: Assets) -> str:
    """:func:`image_range`'s clamp in the units :func:`for_display` draws: "[-1, 1]", or for centred
    data "mean image + [-1.62, 1.71]" (the clamp acts on centred values, and the figures add the
    mean image back, so a bare centred range would misread the images beside it)."""
    low, high = assets.value_range()
    bounds = f"[{low:g}, {high:g}]"
    return bounds if assets.mean is None else f"mean image + {bounds}"


def feature_reference(feats: np.ndarray) -> FrechetReference:
    """The Fréchet reference (mean, covariance, its square root once) of (n, D) numpy features."""
    import numpy as np

    from ..metrics.fidelity import FrechetReference

    return FrechetReference.from_stats(feats.mean(0), np.cov(feats, rowvar=False))


def fd_to_reference(feats: np.ndarray, reference: FrechetReference) -> float:
    """Fréchet distance of (n, D) numpy features to a :func:`feature_reference`, the statistic
    every bootstrap resample of a study recomputes (:meth:`FrechetReference.distance_of_rows`: k × k
    eigenvalue problems for k ≤ D distinct rows)."""
    return reference.distance_of_rows(feats)


JACKKNIFE_GROUPS = 10  # the FD intervals' delete-a-group jackknife: each group leaves out a tenth of both sets


def jackknife_fd_intervals(sets: Sequence[np.ndarray], ref_rows: np.ndarray, groups: int = JACKKNIFE_GROUPS,
                           confidence: float = 0.95, fits: JackknifeReference | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(S,) low and (S,) high ends of each set's ``confidence`` interval for its Fréchet distance
    to the reference rows: a delete-a-group jackknife over both sets. ``sets``: S (n_s, D) numpy
    features; ``ref_rows``: (m, D). Group k holds rows k, k + g, k + 2g, ... (g = ``groups``) of a
    set and of the reference; FD_k leaves out group k of both. With θ̂ the plain FD, the interval is
    θ_J ± t_{g−1} · se_J, where θ_J = g θ̂ − (g − 1) mean_k FD_k (the bias-corrected estimate) and
    se_J² = (g − 1)/g Σ_k (FD_k − mean)²; both ends are cut at 0 (no FD is negative).

    Why: the plain FD is biased upward by terms of order tr/n and tr/m (the set's and the
    reference's), which the basic bootstrap of the set's rows, the reference held fixed, corrected
    for the set's part only. On Gaussian sets of known FD at the quick preset's sizes (D = 128:
    200 rows against 300, and 500 against 1,497; true FDs 0 to 8; ``benchmarks/fd_interval_coverage.py``)
    that interval held the true FD in 0–3% of runs of the first size and 0–80% of the second (the
    more, the larger the FD); this one in 93–97% and 90–95%, at 0.7–1.1 times the width. On the
    quick judge's own (ReLU) features of real digit images, MNIST redrawn in the digits' format
    (``benchmarks/fd_interval_coverage_real.py``: exact finite-population truths 0.25 to 143), it held
    the truth in 94.5–99% of 200 draws per case, and the jackknife SE matched the repeats' SD of the
    corrected FD: there its width (0.8–1.8 times the true FD at the quintile size, 0.4–0.9 at the
    setting's, for true FDs of 40 to 143) is the FD's own sampling spread, not an artefact.

    NaN for a set, or for all when the reference, has fewer rows than ``groups`` or leaves no more
    rows than features once a group is out (the FD is then mostly that bias, far from linear in 1/n).
    ``fits``: the :func:`jackknife_reference` of these ``ref_rows`` when already made (the same numbers)."""
    return replicate_intervals(jackknife_replicates(sets, ref_rows, groups, fits), confidence)


def replicate_intervals(replicates: Sequence[tuple[float, np.ndarray | None]],
                        confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(S,) low and (S,) high ends of :func:`jackknife_fd_intervals` from the sets' S
    :func:`jackknife_replicates` (g = each one's number of groups); NaN where a set had too few rows."""
    import math

    import numpy as np
    from scipy import stats

    low, high = np.full(len(replicates), np.nan), np.full(len(replicates), np.nan)
    for s, (theta, fd_k) in enumerate(replicates):
        if fd_k is None:
            continue
        groups = len(fd_k)
        t = float(stats.t.ppf(0.5 + confidence / 2, groups - 1))
        corrected = groups * theta - (groups - 1) * fd_k.mean()
        se = math.sqrt((groups - 1) / groups * ((fd_k - fd_k.mean()) ** 2).sum())
        low[s], high[s] = max(corrected - t * se, 0.0), max(corrected + t * se, 0.0)
    return low, high


def replicate_fds(replicates: Sequence[tuple[float, np.ndarray | None]]) -> np.ndarray:
    """(S,) each set's bias-corrected Fréchet distance to the reference, from the sets' S
    :func:`jackknife_replicates`: the centre of :func:`jackknife_fd_intervals` (same groups, same NaNs),
    g θ̂ − (g − 1) mean_k FD_k, not cut at 0 (a sum or difference of them stays unbiased to first order)."""
    import numpy as np

    return np.array([np.nan if fd_k is None else len(fd_k) * theta - (len(fd_k) - 1) * fd_k.mean()
                     for theta, fd_k in replicates], dtype=np.float64)


def replicate_points(replicates: Sequence[tuple[float, np.ndarray | None]]) -> np.ndarray:
    """(S,) the bias-corrected FDs that the :func:`replicate_intervals` are about, cut at 0 as their ends
    are (so each lies inside its interval): the value a table writes and a figure marks beside the
    interval. NaN where a set had too few rows; uncut: :func:`replicate_fds`."""
    import numpy as np

    return np.maximum(replicate_fds(replicates), 0.0)


def _too_few_for_jackknife(rows: int, dim: int, groups: int) -> bool:
    """Whether a set of ``rows`` rows of ``dim`` features is too small for the jackknife: fewer rows than
    groups, or no more rows than features once a group is out."""
    import math

    return rows < groups or rows - math.ceil(rows / groups) <= dim


@dataclass(frozen=True)
class JackknifeReference:
    """A reference's Fréchet fits that :func:`jackknife_replicates` reads, made once for every call
    that compares sets with the same rows (g + 1 eigenvalue problems, with their covariances):
    ``full`` from all its rows, ``left_out[k]`` without group k (rows k, k + g, ...); ``groups`` = g;
    ``shape`` = the rows' (m, D), which a call given the fits checks its rows against. Without fits
    (``full`` None, ``left_out`` empty) when the reference has too few rows."""

    groups: int
    shape: tuple[int, int]
    full: FrechetReference | None
    left_out: tuple[FrechetReference, ...]


def jackknife_reference(ref_rows: np.ndarray, groups: int = JACKKNIFE_GROUPS) -> JackknifeReference:
    """The :class:`JackknifeReference` of (m, D) numpy ``ref_rows`` for ``groups`` groups."""
    import numpy as np

    shape = (len(ref_rows), ref_rows.shape[1])
    if _too_few_for_jackknife(len(ref_rows), ref_rows.shape[1], groups):
        return JackknifeReference(groups, shape, None, ())
    return JackknifeReference(groups, shape, feature_reference(ref_rows), tuple(
        feature_reference(np.delete(ref_rows, slice(k, None, groups), axis=0)) for k in range(groups)))


def full_reference(ref_rows: np.ndarray, fits: JackknifeReference | None = None) -> FrechetReference:
    """The Fréchet fit of all the (m, D) numpy ``ref_rows``: ``fits.full`` where ``fits`` is their
    :func:`jackknife_reference` and made it (the same numbers, bit for bit), else fitted here."""
    if fits is not None and fits.full is not None:
        _check_fits_rows(fits, ref_rows)
        return fits.full
    return feature_reference(ref_rows)


def _check_fits_rows(fits: JackknifeReference, ref_rows: np.ndarray) -> None:
    """Refuse fits made from rows of another shape than ``ref_rows`` (another reference)."""
    if fits.shape != (len(ref_rows), ref_rows.shape[1]):
        raise ValueError(f"fits: made from reference rows of shape {fits.shape}, but ref_rows has shape "
                         f"{tuple(ref_rows.shape)}")


def jackknife_replicates(sets: Sequence[np.ndarray], ref_rows: np.ndarray, groups: int = JACKKNIFE_GROUPS,
                         fits: JackknifeReference | None = None) -> list[tuple[float, np.ndarray | None]]:
    """The delete-a-group jackknife's FDs, from which :func:`replicate_intervals` and
    :func:`replicate_fds` form :func:`jackknife_fd_intervals` and the bias-corrected FDs (compute them
    once where a study needs both). For each of the S (n_s, D) numpy ``sets``: (θ̂, FD_k), θ̂ its
    plain Fréchet distance to the (m, D) ``ref_rows`` and FD_k the (groups,) distances with group k
    (rows k, k + g, ... of the set and of the reference) left out of both; (NaN, None) when the set,
    or the reference, has too few rows (:func:`jackknife_fd_intervals`). ``fits``: the
    :func:`jackknife_reference` of these ``ref_rows``, where several calls share one reference
    (made here otherwise); the same numbers, bit for bit."""
    import math

    import numpy as np

    if fits is None:
        fits = jackknife_reference(ref_rows, groups)
    elif fits.groups != groups:
        raise ValueError(f"fits: made for {fits.groups} groups, but groups={groups}")
    else:
        _check_fits_rows(fits, ref_rows)
    if fits.full is None:
        return [(math.nan, None)] * len(sets)
    out = []
    for x in sets:
        if _too_few_for_jackknife(len(x), ref_rows.shape[1], groups):
            out.append((math.nan, None))
            continue
        theta = fd_to_reference(x, fits.full)
        fd_k = np.array([fd_to_reference(np.delete(x, slice(k, None, groups), axis=0), fits.left_out[k])
                         for k in range(groups)])
        out.append((theta, fd_k))
    return out


def jackknife_text(groups: int = JACKKNIFE_GROUPS) -> str:
    """The FD intervals' method and meaning in words, for the report's Terms paragraph (captions
    point there: :func:`fd_interval_pointer`)."""
    return (f"a delete-a-group jackknife interval ({groups} groups, each leaving out 1/{groups} of the set's rows "
            f"and of the reference's): the jackknife's bias-corrected FD ± t({groups - 1}) × its standard error, "
            "cut at 0. It is an interval for the FD between the distributions the set and the reference are drawn from "
            "(as with unlimited rows of both), not the plain FD of these rows, whose upward bias (from "
            "both sets) the correction removes to first order: it lies below the plain FD where that bias is "
            "large. Its width reflects how much one set's FD varies between draws of that many rows, not a defect of "
            "the interval (with the quick preset's judge and sizes, on features of real digit images, it held the "
            "true FD in 94.5–99% of draws)")


#: the Terms paragraph's name for an FD whisker's interval, which captions point to
FD_INTERVAL_TERM = "FD interval"


def fd_interval_pointer(each: str, estimate: str, column: str) -> str:
    """A caption's word on its FD whiskers: ``each`` ("quintile", "setting") set's own 95% interval,
    defined once in the report's Terms (:func:`jackknife_text`), about the bias-corrected FD that the
    figure marks with a diamond (the table's :func:`corrected_fd_column` of the FD column ``column``), and
    why both may lie below the plain FD drawn as ``estimate`` ("the bar", "the dot"). A section that uses
    it carries :func:`fd_interval_terms`, so the definition is there when no report Terms paragraph is."""
    return (f"each {each}'s own 95% FD interval (see {FD_INTERVAL_TERM} in Terms) about its bias-corrected FD "
            f"(diamond: the '{corrected_fd_column(column)}' column), which lies below {estimate}, the uncorrected "
            "FD of its rows, where the estimator's upward bias is large")


def fd_interval_terms() -> dict[str, str]:
    """``Section.terms`` of a section whose captions use :func:`fd_interval_pointer`."""
    return {FD_INTERVAL_TERM: jackknife_text()}


def judge_text(assets: Assets) -> str:
    """How the samples are judged, in words, for the report: the classifier and what its accuracy
    was measured on. A pretrained ``--classifier`` is scored on images drawn from the loader's
    *training* split (the FD reference), which such a net has usually been trained on, so its
    number is not called held-out; without labels there is no judge at all."""
    if assets.classifier is None:
        return f"no judging classifier (the data set has no labels; {fd_space_text(assets)})"
    acc = assets.classifier_accuracy
    pct = "n/a" if acc is None else f"{100 * acc:.1f}%"
    if getattr(assets, "classifier_pretrained", False):
        return (f"`{assets.classifier_name}` (pretrained; accuracy {pct} on {len(assets.heldout)} images of the "
                "training split, which it was likely trained on: not a held-out accuracy)")
    return f"`{assets.classifier_name}` (held-out accuracy {pct})"


def fd_space_text(assets: Assets) -> str:
    """Where a run without a judging classifier measures its Fréchet distances, in words."""
    principal = getattr(assets, "principal", None)
    if principal is None:
        return "FD on pixels"
    rest = ", and the length of the rest" if principal.residual else ""
    return (f"FD in `{principal.name}`: pixels projected on the training split's top {principal.k} principal "
            f"directions, {principal.share:.0%} of its pixel variance{rest}")


def noted_frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray, *,
                           network: str | None = None) -> FrechetDistance:
    """:func:`~kinetic_fm.metrics.fidelity.frechet_distance` for a section that writes
    :func:`fd_bias_note` beside its values: the ``FrechetBiasWarning`` a set of no more samples
    than features raises says what that note says, so it is kept off the console here (a tiny run
    printed it three times for values its report explains); every other warning passes."""
    import warnings

    from ..metrics.fidelity import FrechetBiasWarning, frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrechetBiasWarning)
        return frechet_distance(feats_a, feats_b, network=network)


def fd_bias_note(n: int, dim: int, fd_name: str) -> str:
    """A sentence for a section whose ``fd_name`` values come from sets of ``n`` samples (the
    smaller set) of ``dim`` features, or "" when n > dim. With no more samples than features the
    covariance is singular and the estimator's bias, which shrinks as n grows, dominates the value
    (the case ``FrechetBiasWarning`` warns of; the studies measure through
    :func:`noted_frechet_distance`, which leaves the warning to this note). The sentence says no
    verdict rests on such values: ARCHITECTURE §7's rule, which the studies' verdicts follow
    (shaping, Goldilocks); a new caller must too."""
    if n > dim:
        return ""
    return (f" Each {fd_name} here comes from as few as {n} samples of {dim} features, no more samples than "
            "features, so the covariance is singular and the value carries a large bias of the estimator, "
            "which shrinks as the sample grows and moves with each set's spread: no verdict rests on these "
            "values, and they compare with no other run or published number.")


def fd_undecided_note(n: int, dim: int, each: str, *, smallest: bool = False, reference: bool = False) -> str:
    """The rule text a claim adds when none of its FD parts decides it: its sets have ``n`` samples
    (``smallest``: the smallest set has; ``reference``: the reference the FDs are taken against
    has n rows, fewer than any sample set) of ``dim`` features, n ≤ dim (ARCHITECTURE §7); "" when
    n > dim. ``each`` names what the sets are ("setting", "quintile")."""
    if n > dim:
        return ""
    if reference:
        return (f"; not decided here: each FD is taken against a reference of {n} rows of {dim} features, no "
                "more rows than features, so it is mostly the estimator's bias, which moves with each "
                f"{each}'s spread")
    return (f"; not decided here: each FD comes from {'as few as ' if smallest else ''}{n} samples of {dim} "
            "features, no more samples than features, so it is mostly the estimator's bias, which moves with "
            f"each {each}'s spread")
