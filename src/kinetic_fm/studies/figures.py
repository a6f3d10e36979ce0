"""Figures for the reproduction report, each rendered to PNG bytes as a ``report.Figure``.

matplotlib is imported inside each function (``import kinetic_fm`` stays light) and used through
its object API with the Agg canvas: no pyplot, so no global figure registry to leak into and no
change to the backend of a caller's interactive session; every figure is released on return.

All functions take numpy arrays or CPU/GPU tensors, drop non-finite values (and non-positive
ones on a log axis), and draw "no data" for an empty group rather than failing.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from ..checks import is_real, positive_integer
# what the lines and bands of a kinetic-power panel are: POWER_BAND, its legend's title in every figure
from ..sampling.energy import POWER_BAND, POWER_QUANTILES
from .report import Figure, check_figure_name, check_number_format, format_value

if TYPE_CHECKING:
    import pandas as pd

    from ..metrics.memorization import MemorizationReport

__all__ = ["energy_profile_figure", "plot_energy_profile", "histogram_figure", "sample_run_figure",
           "scatter_figure", "sample_grid_figure", "bar_figure", "line_figure", "LinePanel", "line_panels_figure",
           "memorization_figure"]

DPI = 110
#: the axis label of a per-sample KPE, the same in every figure (ẋ = η·v; η = 1 without KTS)
KPE_LABEL = "KPE  ½∫η²‖v‖² dt"
#: the same for runs no gain acts on (η = 1), where a reader would look in vain for the η being plotted
PLAIN_KPE_LABEL = "KPE  ½∫‖v‖² dt"
#: the axis label of the kinetic power along a trajectory (the energy profiles)
POWER_LABEL = "kinetic power  ½η²‖v‖²"
#: the same for trajectories no gain acts on (η = 1: the EFM runs)
PLAIN_POWER_LABEL = "kinetic power  ½‖v‖²"
#: appended to the label of a logarithmic axis, so a reader never takes it for a linear one
LOG_NOTE = "(log scale)"
#: a requested log axis stays linear when the data span fewer decades than this
MIN_LOG_DECADES = 0.5
# colour-blind-friendly qualitative palette (Okabe-Ito), first colour blue for "plain FM"
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _array(values: Any, *, name: str) -> np.ndarray:
    """Float64 numpy copy of an array-like or tensor (detached, on the host)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        # float64 first: NumPy has no bfloat16, and every value ends as float64 anyway
        values = (values.double() if values.is_floating_point() else values).numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric array-like, got {type(values).__name__}") from err


def _keep(values: np.ndarray, log: bool) -> np.ndarray:
    """Mask of finite values (and positive ones on a log axis)."""
    mask = np.isfinite(values)
    return mask & (values > 0) if log else mask


def _point_alpha(n: int) -> float:
    """Marker opacity that falls as 1/√n, so dense clouds show their density."""
    return float(np.clip(12.0 / math.sqrt(max(n, 1)), 0.08, 0.9))


def _xy(points: np.ndarray) -> np.ndarray:
    """First two coordinates of (n, D) points; 1-D points sit on y = 0."""
    return points[:, :2] if points.shape[1] >= 2 else np.c_[points[:, :1], np.zeros(len(points))]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _style(ax, *, xlabel: str = "", ylabel: str = "", title: str = "") -> None:
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def _log_axis(ax, which: str) -> None:
    """Logarithmic ``which`` ("x" or "y") axis with plain tick labels (20, not 2×10¹). Minor ticks
    are labelled by how many decades the view spans: all of them (20, 30, …, 90) within one
    decade, those at 2 and 5 within two, none beyond, so a narrow view still reads off values.
    The axis label, when there is one, ends with :data:`LOG_NOTE`: plain tick labels on a narrow
    log view look linear at a glance. Data spanning less than :data:`MIN_LOG_DECADES` keep a linear
    axis: there a log scale bends nothing visibly and may leave a single labelled tick."""
    from matplotlib.ticker import FuncFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    low, high = sorted(ax.dataLim.intervalx if which == "x" else ax.dataLim.intervaly)
    if 0 < low <= high < math.inf and math.log10(high / low) < MIN_LOG_DECADES:
        return
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    label = axis.get_label_text()
    if label and not label.endswith(LOG_NOTE):
        axis.set_label_text(f"{label} {LOG_NOTE}")

    def major(value: float, _pos: Any) -> str:
        return f"{value:g}"

    def minor(value: float, _pos: Any) -> str:
        low, high = sorted(axis.get_view_interval())
        if low <= 0 or value <= 0:
            return ""
        decades = math.log10(high / low)
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
        if decades <= 1 or (decades <= 2 and mantissa in (2.0, 5.0)):
            return f"{value:g}"
        return ""

    axis.set_major_formatter(FuncFormatter(major))
    axis.set_minor_formatter(FuncFormatter(minor))


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def _render(fig, name: str, caption: str) -> Figure:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    finally:
        with warnings.catch_warnings():
            # matplotlib 3.7 resets a shared log axis (stacked line panels' x) to (0, 1) while clearing
            warnings.filterwarnings("ignore", "Attempt to set non-positive", UserWarning)
            fig.clear()
    return Figure(name=name, caption=caption, png=buffer.getvalue())


def _finish_axes(ax, drawn: int, *, log_x: bool = False, log_y: bool = False, legend_title: str = "") -> None:
    """End a line panel: log axes and legend when any line was drawn, else a "no data" mark."""
    if drawn:
        if log_x:
            _log_axis(ax, "x")
        if log_y:
            _log_axis(ax, "y")
        _legend(ax, legend_title)
    else:
        _no_data(ax)


def _finish_lines(fig, ax, drawn: int, name: str, caption: str, *, log_x: bool = False,
                  log_y: bool = False) -> Figure:
    """End a one-panel line plot (see :func:`_finish_axes`) and render it."""
    _finish_axes(ax, drawn, log_x=log_x, log_y=log_y)
    return _render(fig, name, caption)


def _legend(ax, title: str = "") -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(frameon=False, fontsize=9, title=title or None, title_fontsize=9)


# ----------------------------------------------------------------------------------------------


def _power_summary(times: np.ndarray, increments: np.ndarray, *, positive: bool = False, what: str = "times"):
    """Kinetic power increments / Δt at the step midpoints: (mid, mean, q10, q90, n) over the
    steps where some sample has a finite (and, if ``positive``, > 0) value; None when none has."""
    dt = np.diff(times)
    if np.any(~(dt > 0)):
        raise ValueError(f"{what} must be strictly increasing")
    power = increments / dt[None, :]
    power[~_keep(power, positive)] = np.nan
    steps = ~np.all(np.isnan(power), axis=0)
    if not steps.any():
        return None
    power = power[:, steps]
    n = int(np.sum(~np.all(np.isnan(power), axis=1)))
    with warnings.catch_warnings():  # all-NaN steps were removed; single NaNs are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(power, axis=0)
        low, high = np.nanquantile(power, list(POWER_QUANTILES), axis=0)
    return 0.5 * (times[:-1] + times[1:])[steps], mean, low, high, n


def energy_profile_figure(name: str, caption: str, profiles: dict[str, tuple[Any, Any]], *,
                          log_y: bool = False, title: str = "", marks: dict[str, float] | None = None,
                          shaped: bool = True) -> Figure:
    """Kinetic power along the trajectory: mean line and 10–90 % band per label.

    Args:
        profiles: label -> ``(times, increments)``: ``times`` (S + 1,) the grid from 0 to 1,
            ``increments`` (B, S) per-step applied-energy increments (``SampleResult.profile``).
            Power = increment / Δt at the step midpoints, i.e. ½η²‖v‖², so profiles on
            different grids are comparable. Non-finite increments are ignored per step.
        log_y: logarithmic power axis (shows the late 1/(1 − t) spike of memorizing fields).
        marks: label -> a time in [0, 1] drawn as a thin vertical line with its label in the
            legend, e.g. ``{"τ = 0.6 (landing starts)": 0.6}``.
        shaped: some profile may carry a KTS gain η (the axis reads ½η²‖v‖²); False when none does
            (η = 1: the axis reads ½‖v‖²).
    """
    check_figure_name(name)
    fig = _new_figure(6.4, 4.0)
    for label, t in (marks or {}).items():
        if not (is_real(t) and 0.0 <= float(t) <= 1.0):
            raise ValueError(f"marks[{label!r}] must be a time in [0, 1], got {t!r}")
    _draw_power(fig.add_subplot(), profiles, log_y=log_y, title=title, marks=marks,
                ylabel=POWER_LABEL if shaped else PLAIN_POWER_LABEL)
    return _render(fig, name, caption)


def _draw_power(ax, profiles: dict[str, tuple[Any, Any]], *, log_y: bool, title: str,
                marks: dict[str, float] | None = None, ylabel: str = POWER_LABEL) -> None:
    """The panel of :func:`energy_profile_figure` on ``ax`` (``marks`` checked by the caller)."""
    drawn = 0
    crowded = len(profiles) > 2  # more than two filled bands blend into one grey: outline them instead
    for k, (label, (times, increments)) in enumerate(profiles.items()):
        t = _array(times, name=f"profiles[{label!r}] times").ravel()
        inc = _array(increments, name=f"profiles[{label!r}] increments")
        if inc.ndim == 1:
            inc = inc[None, :]
        if inc.ndim != 2 or t.size != inc.shape[1] + 1:
            raise ValueError(f"profiles[{label!r}]: times must have shape (S + 1,) and increments (B, S), one grid "
                             f"for all samples (dopri5's per-sample grids are not drawn here); got times "
                             f"{_array(times, name='times').shape} and increments {inc.shape}")
        summary = _power_summary(t, inc, positive=log_y, what=f"profiles[{label!r}] times")
        if summary is None:
            continue
        mid, mean, low, high, n = summary
        color = PALETTE[k % len(PALETTE)]
        if crowded:
            for edge in (low, high):
                ax.plot(mid, edge, color=color, linewidth=0.9, linestyle=":")
        else:
            ax.fill_between(mid, low, high, color=color, alpha=0.2, linewidth=0)
        # the first profile (the reference, e.g. plain FM) dashed on top: where others coincide
        # with it, neither hides the other
        reference = k == 0 and len(profiles) > 1
        ax.plot(mid, mean, color=color, linewidth=1.8, label=f"{label} (n={n})",
                linestyle=(0, (4, 2.5)) if reference else "-", zorder=3 if reference else 2)
        drawn += 1
    _style(ax, xlabel="t   (0 = noise, 1 = data)", ylabel=ylabel, title=title)
    if drawn:
        ax.set_xlim(0, 1)
        for label, t in (marks or {}).items():  # after the lines, so the legend lists them first
            ax.axvline(float(t), color="#555555", linestyle="-.", linewidth=1.0, label=label, zorder=1)
    _finish_axes(ax, drawn, log_y=log_y, legend_title=POWER_BAND)


def plot_energy_profile(results: Any, *, log_y: bool = False, title: str = "",
                        name: str = "energy_profile", caption: str = "") -> Figure:
    """Kinetic power ½η²‖v‖² over t of ``kfm.sample`` results: mean and 10–90 % band per run (the
    legend's title says so). The axis names η only where a gain acted on some run
    (``SampleResult.shaped``), else it reads ½‖v‖².

    Args:
        results: a :class:`~kinetic_fm.SampleResult` sampled with ``profile=True``, or a dict
            label -> such results (one line each, e.g. plain FM against KTS). dopri5's
            per-sample steps are spread over 100 equal steps of [0, 1] first (each sample's
            power constant within its own steps; its energy kept).
        log_y: logarithmic power axis (shows a late 1/(1 − t) spike).
        title, name, caption: the figure's title, file stem ([a-z0-9_-]+) and caption.

    Returns a :class:`~kinetic_fm.studies.report.Figure`: Jupyter shows it inline, ``.save(path)``
    writes the PNG, ``.png`` holds its bytes. ValueError for results sampled without ``profile=True``.
    """
    from ..sampling.result import SampleResult

    runs = {"samples": results} if isinstance(results, SampleResult) else results
    if not isinstance(runs, dict) or not runs:
        raise TypeError(f"results must be a SampleResult or a non-empty dict of them, got {type(results).__name__}")
    profiles = {}
    for label, result in runs.items():
        where = "results" if runs is not results else f"results[{label!r}]"
        if not isinstance(result, SampleResult):
            raise TypeError(f"{where} must be a SampleResult (from kfm.sample), got {type(result).__name__}")
        if result.profile is None:
            raise ValueError(f"{where} has no energy profile: sample it with kfm.sample(..., profile=True)")
        times, increments = result.times, result.profile
        if times.dim() != 1:  # dopri5: each sample on its own steps
            times, increments = _on_shared_grid(_array(times, name="times"), _array(increments, name="profile"), 100)
        profiles[str(label)] = (times, increments)
    return energy_profile_figure(name, caption, profiles, log_y=log_y, title=title,
                                 shaped=any(result.shaped for result in runs.values()))


def histogram_figure(name: str, caption: str, values: dict[str, Any], *, xlabel: str,
                     log_x: bool = False, title: str = "") -> Figure:
    """Overlaid density histograms on shared bins, one per label (legend shows each n)."""
    check_figure_name(name)
    fig = _new_figure(6.4, 4.0)
    _draw_histogram(fig.add_subplot(), values, xlabel=xlabel, log_x=log_x, title=title)
    return _render(fig, name, caption)


def _draw_histogram(ax, values: dict[str, Any], *, xlabel: str, log_x: bool, title: str) -> None:
    """The panel of :func:`histogram_figure` on ``ax``."""
    groups = {}
    for label, vals in values.items():
        v = _array(vals, name=f"values[{label!r}]").ravel()
        groups[label] = v[_keep(v, log_x)]
    pooled = np.concatenate([v for v in groups.values()] or [np.empty(0)])
    if pooled.size == 0:
        _style(ax, xlabel=xlabel, title=title)
        _no_data(ax)
        return
    lo, hi = float(pooled.min()), float(pooled.max())
    # √n bins of the largest group: each group is drawn on its own, so pooling them would make
    # every bin too narrow to hold more than noise
    count = int(np.clip(math.sqrt(max(v.size for v in groups.values())), 10, 40))
    if log_x:
        if hi <= lo:
            lo, hi = lo / 1.5, hi * 1.5
        bins = np.geomspace(lo, hi, count + 1)
    else:
        if hi <= lo:
            lo, hi = lo - 0.5 * max(abs(lo), 1.0), hi + 0.5 * max(abs(hi), 1.0)
        bins = np.linspace(lo, hi, count + 1)
    for k, (label, v) in enumerate(groups.items()):
        if v.size == 0:
            ax.plot([], [], color=PALETTE[k % len(PALETTE)], label=f"{label} (no data)")
            continue
        color = PALETTE[k % len(PALETTE)]
        ax.hist(v, bins=bins, density=True, histtype="stepfilled", alpha=0.3, color=color)
        ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.5, color=color,
                label=f"{label} (n={v.size})")
    _style(ax, xlabel=xlabel, ylabel="density", title=title)
    if log_x:
        _log_axis(ax, "x")
    _legend(ax)


def sample_run_figure(name: str, caption: str, kpe: Any, profile: tuple[Any, Any] | None = None, *,
                      label: str = "samples", bins: int = 100, title: str = "", shaped: bool = True) -> Figure:
    """One sampling run at a glance (``kfm sample --figure``).

    With ``profile``, two panels: the kinetic power ½η²‖v‖² over t (mean line and 10–90 % band,
    as :func:`energy_profile_figure` draws it) beside the per-sample KPE histogram (as
    :func:`histogram_figure`); without it, the histogram alone. An axis turns logarithmic when
    its values span two decades or more (the power's mean curve; the finite KPEs, all > 0).

    Args:
        kpe: (B,) per-sample applied energies; non-finite ones are left out.
        profile: ``(times, increments)``: times (S + 1,) one grid for all samples and increments
            (B, S); or dopri5's per-sample steps, times (B, W + 1) NaN-padded and increments (B, W)
            zero-padded (``kinetic_fm.runs.profile_from_table``). Per-sample grids are put on
            ``bins`` equal steps of [0, 1] first: each sample's piecewise-constant power is
            integrated over every bin, so its energy is kept and the curve is the bin-average power.
            Samples that did not reach t = 1 (a flagged non-finite velocity) are left out there.
        label: the legend's name for these samples.
        bins: a positive integer (a NumPy integer or 0-d tensor too), checked with or without
            per-sample grids.
        shaped: a KTS gain η may act on the run (the axes read ½∫η²‖v‖² dt and ½η²‖v‖²); False when
            none does (η = 1: they read ½∫‖v‖² dt and ½‖v‖²).
    """
    check_figure_name(name)
    bins = positive_integer("bins", bins)
    kpe_label = KPE_LABEL if shaped else PLAIN_KPE_LABEL
    values = _array(kpe, name="kpe").ravel()
    finite = values[np.isfinite(values)]
    log_x = bool(finite.size and finite.min() > 0) and _spans_decades(finite)
    if profile is None:
        fig = _new_figure(6.4, 4.0)
        _draw_histogram(fig.add_subplot(), {label: values}, xlabel=kpe_label, log_x=log_x, title=title)
        return _render(fig, name, caption)
    times = _array(profile[0], name="profile times")
    increments = _array(profile[1], name="profile increments")
    if times.ndim == 2:
        times, increments = _on_shared_grid(times, increments, bins)
    if increments.ndim == 1:
        increments = increments[None, :]
    log_y = False
    if times.ndim == 1 and increments.ndim == 2 and times.size == increments.shape[1] + 1:  # else _draw_power says
        summary = _power_summary(times, increments, what="profile times")
        log_y = summary is not None and _spans_decades(summary[1][summary[1] > 0])
    fig = _new_figure(12.8, 4.0)
    left, right = fig.subplots(1, 2)
    _draw_power(left, {label: (times, increments)}, log_y=log_y, title="kinetic power over t",
                ylabel=POWER_LABEL if shaped else PLAIN_POWER_LABEL)
    _draw_histogram(right, {label: values}, xlabel=kpe_label, log_x=log_x, title="per-sample KPE")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _render(fig, name, caption)


def _spans_decades(values: np.ndarray, decades: float = 2.0) -> bool:
    """Whether positive ``values`` run over at least ``decades`` powers of ten (False when empty)."""
    return bool(values.size) and float(values.max()) >= 10.0 ** decades * float(values.min())


def _on_shared_grid(times: np.ndarray, increments: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample grids (B, W + 1) (NaN-padded) and increments (B, W) -> (``bins`` + 1,) equal steps
    of [0, 1] and (B, ``bins``) increments: each sample's cumulative energy, piecewise linear
    between its step times, read at the shared times. Rows that do not reach t = 1 become NaN."""
    bins = positive_integer("bins", bins)
    if times.ndim != 2 or increments.ndim != 2 or times.shape[0] != increments.shape[0] \
            or times.shape[1] != increments.shape[1] + 1:
        raise ValueError(f"per-sample profiles need times (B, W + 1) and increments (B, W); got times {times.shape} "
                         f"and increments {increments.shape}")
    grid = np.linspace(0.0, 1.0, bins + 1)
    out = np.full((times.shape[0], bins), np.nan)
    for i, (row, inc) in enumerate(zip(times, increments)):
        t = row[np.isfinite(row)]
        steps = inc[:t.size - 1]
        if t.size < 2 or t[0] != 0.0 or t[-1] != 1.0 or not np.all(np.isfinite(steps)):
            continue
        if np.any(np.diff(t) <= 0):
            raise ValueError(f"profile times of row {i} must be strictly increasing")
        out[i] = np.diff(np.interp(grid, t, np.r_[0.0, np.cumsum(steps)]))
    return grid, out


def scatter_figure(name: str, caption: str, x: Any, y: Any, *, xlabel: str, ylabel: str,
                   annotation: str = "", log_x: bool = False, log_y: bool = False, title: str = "") -> Figure:
    """Scatter of paired values (pairs with a non-finite member are dropped); ``annotation``
    (e.g. "Spearman ρ = −0.41 [−0.48, −0.33]") goes in the upper-left corner. Points fade
    and shrink as n grows so dense clouds stay readable."""
    check_figure_name(name)
    xs = _array(x, name="x").ravel()
    ys = _array(y, name="y").ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same length, got {xs.size} and {ys.size}")
    keep = _keep(xs, log_x) & _keep(ys, log_y)
    xs, ys = xs[keep], ys[keep]
    fig = _new_figure(5.6, 4.4)
    ax = fig.add_subplot()
    _style(ax, xlabel=xlabel, ylabel=ylabel)
    if xs.size == 0:
        _no_data(ax)
    else:
        n = xs.size
        alpha = _point_alpha(n)
        size = float(np.clip(300.0 / math.sqrt(n), 3.0, 36.0))
        ax.scatter(xs, ys, s=size, alpha=alpha, color=PALETTE[0], edgecolors="none")
        if log_x:
            _log_axis(ax, "x")
        if log_y:
            _log_axis(ax, "y")
    # above the axes, so it never hides points; the title then goes to the figure
    label = f"{annotation}   (n = {xs.size})" if annotation else f"n = {xs.size}"
    ax.set_title(label, loc="left", fontsize=10, color="#333333")
    if title:
        ax.set_title("")
        fig.suptitle(title)
    return _render(fig, name, caption)


def _mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """(n, C, H, W) in [-1, 1] -> (rows·(H+1)+1, cols·(W+1)+1, C) in [0, 1] with white gutters."""
    n, c, h, w = images.shape
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    pixels = (np.clip(images, -1.0, 1.0) + 1.0) / 2.0
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = pixels[i].transpose(1, 2, 0)
    return canvas


def _show_mosaic(ax, mosaic: np.ndarray) -> None:
    """Draw a :func:`_mosaic` canvas: greyscale for one channel, RGB for three."""
    if mosaic.shape[2] == 1:
        ax.imshow(mosaic[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")


def sample_grid_figure(name: str, caption: str, groups: dict[str, Any], *, title: str = "",
                       columns: int = 8) -> Figure:
    """Side-by-side panels, one per group (e.g. "lowest KPE", "highest KPE").

    Args:
        groups: label -> images (n, C, H, W) or (n, H, W) in [-1, 1] (C = 1 grey, C = 3 RGB),
            drawn as a mosaic with ``columns`` columns; or 2-D points (n, D), drawn as a scatter
            of the first two coordinates on axes shared by all point panels. Samples with a
            non-finite value are dropped.
        columns: the mosaics' columns, a positive integer (a NumPy integer or 0-d tensor too).
    """
    check_figure_name(name)
    if not groups:
        raise ValueError("groups must name at least one group")
    columns = positive_integer("columns", columns)
    arrays = {}
    for label, values in groups.items():
        a = _array(values, name=f"groups[{label!r}]")
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim not in (2, 4) or (a.ndim == 4 and a.shape[1] not in (1, 3)):
            raise ValueError(f"groups[{label!r}] must be images (n, C, H, W) with C in {{1, 3}}, "
                             f"(n, H, W), or points (n, D); got shape {a.shape}")
        finite = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1) if a.size else np.ones(a.shape[0], bool)
        arrays[label] = a[finite]
    points = [a for a in arrays.values() if a.ndim == 2 and a.shape[0]]
    limits = None
    if points:
        pooled = np.concatenate([_xy(p) for p in points])
        lo, hi = pooled.min(axis=0), pooled.max(axis=0)
        pad = 0.05 * np.maximum(hi - lo, 1e-9)
        limits = (lo - pad, hi + pad)
    # panel height follows the tallest mosaic (rows / columns), points get square panels
    aspects = [0.0 if a.shape[0] == 0 else 1.0 if a.ndim == 2 else
               math.ceil(a.shape[0] / min(columns, a.shape[0])) * (a.shape[2] + 1) / (min(columns, a.shape[0]) * (a.shape[3] + 1))
               for a in arrays.values()]
    panel = 3.4
    fig = _new_figure(panel * len(arrays), float(np.clip(panel * (max(aspects) or 1.0), 1.2, 8.0)) + 0.5)
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    for k, (ax, (label, a)) in enumerate(zip(axes, arrays.items())):
        if a.shape[0] == 0:
            _no_data(ax)
        elif a.ndim == 4:
            _show_mosaic(ax, _mosaic(a, columns))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        else:
            xy = _xy(a)
            ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=_point_alpha(len(xy)), color=PALETTE[k % len(PALETTE)], edgecolors="none")
            _style(ax)
            ax.set_xlim(limits[0][0], limits[1][0])
            ax.set_ylim(limits[0][1], limits[1][1])
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{label}  (n={a.shape[0]})", fontsize=11)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _render(fig, name, caption)


def bar_figure(name: str, caption: str, frame: "pd.DataFrame", *, x: str, y: str, low: str | None = None,
               high: str | None = None, ylabel: str = "", xlabel: str = "", title: str = "",
               reference: float | None = None, reference_label: str = "reference", reference_format: str = ".4g",
               points: bool = False, group: str | None = None, center: str | None = None,
               value_label: str = "", center_label: str = "") -> Figure:
    """Bars of ``frame[y]`` per ``frame[x]``, optional CI whiskers ``[frame[low], frame[high]]``
    and a dashed horizontal ``reference`` line (e.g. the plain-FM value), its legend writing the value
    with ``reference_format`` (a :class:`~kinetic_fm.studies.report.Section` format such as ``".3f"`` or
    ``"sig3"``, so it reads as the tables and claims write that quantity). Rows with a non-finite
    ``y`` are dropped; a non-finite bound draws no whisker on that side (the other end reaches the
    value). A whisker spans its interval as given, also one wholly below or above the value.

    ``points`` draws a dot per row instead of a bar, on a y axis fitted to the values: a bar's
    length must start at zero, so bars hide differences of a few percent that dots show.
    ``group`` names a column whose runs of equal values are fenced off by dotted lines and
    named above the axes (e.g. the parts of an ablation grid).

    ``center`` names the column of the estimate the whiskers are an interval about, where it is not
    ``y`` (a bias-corrected FD beside the plain one): drawn as a dark diamond on its whisker, ``y`` as a
    pale bar (an open dot with ``points``) behind it, the legend, under the axes, naming both
    (``value_label`` for ``y``, ``center_label`` for the diamonds and whiskers; the columns' names by
    default). Without it a whisker beside a value reads as that value's interval.
    """
    check_figure_name(name)
    for arg, column in (("x", x), ("y", y), ("low", low), ("high", high), ("group", group), ("center", center)):
        if column is not None and column not in frame.columns:
            raise ValueError(f"{arg}={column!r} is not a column of frame (columns: {list(frame.columns)})")
    check_number_format(reference_format, "reference_format")
    values = _array(frame[y].to_numpy(), name=f"frame[{y!r}]")
    keep = np.isfinite(values)
    labels = [str(v) for v in frame[x].to_numpy()[keep]]
    values = values[keep]
    fig = _new_figure(max(5.0, min(11.0, 1.2 + 0.55 * len(labels))), 4.2)
    ax = fig.add_subplot()
    _style(ax, xlabel=xlabel, ylabel=ylabel or y, title=title)
    ax.grid(False, axis="x")
    if not labels:
        _no_data(ax)
        return _render(fig, name, caption)
    positions = np.arange(len(labels))
    value_label = (value_label or y) if center is not None else None
    if points:
        ax.plot(positions, values, "o", color=PALETTE[0], markersize=6, label=value_label,
                markerfacecolor="none" if center else PALETTE[0])
    else:
        ax.bar(positions, values, color=PALETTE[0], alpha=0.35 if center else 0.85, width=0.7, label=value_label)
    middle = values  # what a whisker is about
    if center is not None:
        middle = _array(frame[center].to_numpy(), name=f"frame[{center!r}]")[keep]
        ax.plot(positions, middle, "D", color="#222222", markersize=5.5, zorder=3,
                label=(center_label or center) if np.isfinite(middle).any() else "_nolegend_")
    if low is not None or high is not None:
        # the whisker is the interval itself: drawn as an error bar about the bar's value, an interval
        # wholly below it (a bias-corrected FD interval) was stretched up to the bar
        lo = _array(frame[low].to_numpy(), name=f"frame[{low!r}]")[keep] if low else middle
        hi = _array(frame[high].to_numpy(), name=f"frame[{high!r}]")[keep] if high else middle
        lo, hi = np.where(np.isfinite(lo), lo, middle), np.where(np.isfinite(hi), hi, middle)
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)  # a missing bound stands at the value
        shown = np.isfinite(lo) & np.isfinite(hi) & (hi > lo) if center is not None else np.isfinite(lo)
        ax.errorbar(positions[shown], ((lo + hi) / 2)[shown], yerr=((hi - lo) / 2)[shown], fmt="none",
                    ecolor="#333333", elinewidth=1.1, capsize=3)
    if reference is not None and math.isfinite(reference):
        ax.axhline(reference, color=PALETTE[1], linestyle="--", linewidth=1.4,
                   label=f"{reference_label} = {format_value(reference, reference_format)}")
        if center is None:
            _legend(ax)
    if group is not None:
        _fence_groups(ax, [str(v) for v in frame[group].to_numpy()[keep]])
    ax.set_xticks(positions)
    rotate = len(labels) > 6 or max(len(s) for s in labels) > 10
    ax.set_xticklabels(labels, rotation=35 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    if center is not None:  # three entries inside the axes would sit on some whisker
        _legend_below(ax)
    return _render(fig, name, caption)


def _fence_groups(ax, groups: list[str]) -> None:
    """Dotted vertical lines between runs of equal ``groups`` (one per bar) and each run's name
    centred above the axes."""
    from matplotlib.transforms import blended_transform_factory

    above = blended_transform_factory(ax.transData, ax.transAxes)
    start = 0
    for i in range(1, len(groups) + 1):
        if i < len(groups) and groups[i] == groups[start]:
            continue
        if i < len(groups):
            ax.axvline(i - 0.5, color="#999999", linestyle=":", linewidth=1.0)
        ax.text((start + i - 1) / 2, 1.01, groups[start], transform=above, ha="center", va="bottom",
                fontsize=8, color="#555555")
        start = i


def line_figure(name: str, caption: str, x: Any, ys: dict[str, Any], *, xlabel: str, ylabel: str,
                log_x: bool = False, log_y: bool = False,
                bands: dict[str, tuple[Any, Any]] | None = None, title: str = "",
                reference: float | None = None, reference_label: str = "reference") -> Figure:
    """Lines ``ys[label]`` against the shared ``x`` (same length), with optional shaded
    ``bands[label] = (low, high)`` (e.g. a CI). Points with a non-finite value are dropped
    per line; markers are drawn when there are few points. ``reference`` draws a dashed grey
    horizontal line, named ``reference_label`` in the legend. Quantities in other units go on panels
    of their own: :func:`line_panels_figure`.
    """
    check_figure_name(name)
    xs = _array(x, name="x").ravel()
    bands = bands or {}
    _check_bands(bands, ys, "bands", "ys")
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    drawn = _lines(ax, xs, ys, bands, log_x, log_y, first_colour=0)
    _style(ax, xlabel=xlabel, ylabel=ylabel, title=title)
    _reference_line(ax, reference, reference_label)
    _integer_ticks(ax, xs, log_x)
    return _finish_lines(fig, ax, drawn, name, caption, log_x=log_x, log_y=log_y)


@dataclass(frozen=True)
class LinePanel:
    """One panel of :func:`line_panels_figure`: lines ``ys[label]`` of one quantity, its axis labelled
    ``ylabel`` (logarithmic with ``log_y``), optional shaded ``bands[label] = (low, high)`` and a dashed
    grey ``reference`` line named ``reference_label`` (as :func:`line_figure`'s)."""

    ys: dict[str, Any]
    ylabel: str
    bands: dict[str, tuple[Any, Any]] | None = None
    reference: float | None = None
    reference_label: str = "reference"
    log_y: bool = False


def line_panels_figure(name: str, caption: str, x: Any, panels: Sequence[LinePanel], *, xlabel: str,
                       log_x: bool = False, stacked: bool = False) -> Figure:
    """:class:`LinePanel` s side by side against the shared ``x``, each quantity on its own axis with
    its own label (two fractions of different things on one axis read as one quantity); colours run
    on from panel to panel, so no two lines share one. ``stacked`` puts them one above the other on
    one x axis, its ticks and ``xlabel`` under the lowest: for quantities whose curves a reader follows
    across the same x (on twin y axes of one plot, where two curves cross would mean nothing)."""
    check_figure_name(name)
    if not panels:
        raise ValueError("panels must hold at least one LinePanel")
    for i, panel in enumerate(panels):
        _check_bands(panel.bands or {}, panel.ys, f"panels[{i}].bands", f"panels[{i}].ys")
    xs = _array(x, name="x").ravel()
    if stacked:
        fig = _new_figure(6.4, 0.6 + 2.6 * len(panels))
        axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    else:
        fig = _new_figure(4.8 * len(panels), 4.0)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colour = 0
    for k, (ax, panel) in enumerate(zip(axes, panels)):
        drawn = _lines(ax, xs, panel.ys, panel.bands or {}, log_x, panel.log_y, first_colour=colour)
        colour += len(panel.ys)
        _style(ax, xlabel=xlabel if not stacked or k == len(panels) - 1 else "", ylabel=panel.ylabel)
        _reference_line(ax, panel.reference, panel.reference_label)
        _integer_ticks(ax, xs, log_x)
        _finish_axes(ax, drawn, log_x=log_x, log_y=panel.log_y)
        if stacked and k < len(panels) - 1:
            ax.tick_params(axis="x", labelbottom=False)   # the panel below shows them (3.7's sharex left them on)
    fig.tight_layout()
    return _render(fig, name, caption)


def _check_bands(bands: dict, ys: dict, bands_name: str, ys_name: str) -> None:
    """Refuse shaded bands for labels that draw no line."""
    unknown = set(bands) - set(ys)
    if unknown:
        raise ValueError(f"{bands_name} names labels missing from {ys_name}: {sorted(map(str, unknown))}")


def _reference_line(ax, reference: float | None, label: str) -> None:
    """A dashed grey horizontal line at ``reference`` (none when it is None or not finite)."""
    if reference is not None and math.isfinite(reference):
        ax.axhline(reference, color="#777777", linestyle="--", linewidth=1.1, label=label)


def _integer_ticks(ax, xs: np.ndarray, log_x: bool) -> None:
    """Whole-number x ticks on a linear axis whose values are all whole (counts, quintiles: no 2.5)."""
    finite = xs[np.isfinite(xs)]
    if not log_x and finite.size and np.all(finite == np.round(finite)):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _lines(ax, xs: np.ndarray, ys: dict[str, Any], bands: dict[str, tuple[Any, Any]], log_x: bool, log_y: bool,
           *, first_colour: int) -> int:
    """Draw :func:`line_figure`'s lines (and bands) on ``ax``, colours from ``PALETTE[first_colour]``
    on; return how many lines had a point to draw."""
    drawn = 0
    for k, (label, values) in enumerate(ys.items(), start=first_colour):
        v = _array(values, name=f"ys[{label!r}]").ravel()
        if v.shape != xs.shape:
            raise ValueError(f"ys[{label!r}] has {v.size} values but x has {xs.size}")
        keep = _keep(xs, log_x) & _keep(v, log_y)
        color = PALETTE[k % len(PALETTE)]
        if label in bands:
            lo = _array(bands[label][0], name=f"bands[{label!r}] low").ravel()
            hi = _array(bands[label][1], name=f"bands[{label!r}] high").ravel()
            if lo.shape != xs.shape or hi.shape != xs.shape:
                raise ValueError(f"bands[{label!r}] must be two arrays of length {xs.size}")
            band = keep & _keep(lo, log_y) & _keep(hi, log_y)
            if band.any():
                order = np.argsort(xs[band], kind="stable")
                ax.fill_between(xs[band][order], lo[band][order], hi[band][order], color=color, alpha=0.2, linewidth=0)
        if not keep.any():
            continue
        order = np.argsort(xs[keep], kind="stable")
        marker = "o" if keep.sum() <= 20 else None
        ax.plot(xs[keep][order], v[keep][order], color=color, linewidth=1.8, marker=marker, markersize=4, label=str(label))
        drawn += 1
    return drawn


def memorization_figure(name: str, caption: str, report: "MemorizationReport", samples: Any = None,
                        train: Any = None, *, pairs: int = 8, title: str = "", seeds: Any = None,
                        sample_rows: bool = True) -> Figure:
    """The gap-ratio audit at a glance.

    Left: the distribution of d1/d2 on [0, 1], the threshold dashed, the memorized part shaded,
    F_mem with its CI above (at F_mem = 0 or 1, where a bootstrap interval has no width, the
    Wilson one). Right, when ``samples`` (B, ...) and ``train`` (N, ...) are the audited images
    ((n, C, H, W) or (n, H, W, C) with C in {1, 3}, or (n, H, W)): the ``pairs`` samples
    with the smallest ratio (top row) above their nearest training items (bottom row), each
    column labelled with its ratio, the sample's row ("sample", as ``report.to_frame()`` and
    ``kfm memorization --out`` name it), its seed when ``seeds`` ((B,) integers, e.g. a kfm sample
    run's) are given, and the nearest training item's row ("nearest"), so a reader finds each pair
    in the table. ``sample_rows=False`` leaves the sample's row out, for a table keyed by seed with no
    row column (the studies' ``memorizer_final``); it needs ``seeds``. Pixels are shown as uint8 (0–255),
    [-1, 1] or [0, 1] data,
    judged from the training items' range (any other range is stretched to fit it); the samples
    are drawn on the same scale, clipped where they overshoot it. ``pairs`` is a positive integer
    (a NumPy integer or 0-d tensor too).
    """
    check_figure_name(name)
    pairs = positive_integer("pairs", pairs)
    ratio = _array(report.ratio, name="report.ratio").ravel()
    if seeds is not None:
        seeds = np.asarray(seeds.detach().cpu() if hasattr(seeds, "detach") else seeds).ravel()
        if seeds.shape != ratio.shape or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds must hold one integer per audited sample ({ratio.size}), got "
                             f"{seeds.size} of dtype {seeds.dtype}")
    elif not sample_rows:
        raise ValueError("sample_rows=False names each sample by its seed: give seeds, one per audited sample")
    shown = closest_pairs(report, samples, train, pairs) if samples is not None and train is not None else None
    wide = shown is not None
    mosaic_width = max(3.4, 0.9 * shown.samples.shape[0]) if wide else 0.0
    fig = _new_figure(4.8 + mosaic_width, 3.8)
    axes = fig.subplots(1, 2 if wide else 1, squeeze=False,
                        gridspec_kw={"width_ratios": [4.8, mosaic_width]} if wide else None)[0]
    ax = axes[0]
    bins = _bins_with_edge(float(report.threshold))
    # the report's own flags: an exact tie at the threshold can read just below it
    memorized = _array(report.memorized, name="report.memorized").ravel().astype(bool)
    below = ratio[memorized]
    ax.hist(ratio[~memorized], bins=bins, color=PALETTE[0], alpha=0.35, histtype="stepfilled",
            label=f"not memorized: {ratio.size - below.size}/{ratio.size}")
    ax.hist(below, bins=bins, color=PALETTE[1], alpha=0.8, histtype="stepfilled",
            label=f"memorized: {below.size}/{ratio.size}")
    ax.axvline(report.threshold, color="#333333", linestyle="--", linewidth=1.2,
               label=f"threshold d1/d2 = {_fraction_text(report.threshold)}")
    _style(ax, xlabel="gap ratio d1/d2", ylabel="samples")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count: 0.2 samples for a set of one
    ax.set_xlim(0.0, 1.0)
    kind, low, high = report.shown_interval()
    interval = "" if math.isnan(low) else f" ({report.confidence:.0%} {kind} CI {low:.3f}–{high:.3f})"
    ax.set_title(f"F_mem = {report.fraction:.3f}{interval}", fontsize=11)
    if wide:
        images, nearest = shown.samples, shown.nearest
        ax = axes[1]
        _show_mosaic(ax, _mosaic(np.concatenate([images, nearest]), columns=images.shape[0]))
        width = images.shape[3] + 1
        ax.set_xticks([1 + q * width + images.shape[3] / 2 - 0.5 for q in range(images.shape[0])])
        ax.set_xticklabels(["\n".join([f"{r:.2f}", *([f"sample {i}"] if sample_rows else []),
                                        *([f"seed {seeds[i]}"] if seeds is not None else []), f"nearest {j}"])
                            for r, i, j in zip(shown.ratios, shown.rows, shown.nearest_rows)], fontsize=7)
        named = [*(["row"] if sample_rows else []), *(["seed"] if seeds is not None else [])]
        ax.set_xlabel(f"gap ratio d1/d2, the sample's {' and '.join(named)}, its nearest training item's row",
                      fontsize=8)
        ax.set_yticks([1 + images.shape[2] / 2, 2 + images.shape[2] * 1.5])
        ax.set_yticklabels(["sample", "nearest\ntraining"], fontsize=9)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title("smallest gap ratios", fontsize=11)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _legend_below(axes[0])
    return _render(fig, name, caption)


def _bins_with_edge(edge: float, width: float = 0.025) -> np.ndarray:
    """Bin edges over [0, 1] about ``width`` wide with ``edge`` (the memorization threshold) among
    them, so no bar straddles the threshold and mixes memorized with unmemorized samples (with 40
    equal bins, 1/3 fell inside [0.325, 0.35) and a memorized bar poked out past the line)."""
    if not 0.0 < edge < 1.0:
        return np.linspace(0.0, 1.0, round(1.0 / width) + 1)
    below = np.linspace(0.0, edge, max(1, round(edge / width)) + 1)
    above = np.linspace(edge, 1.0, max(1, round((1.0 - edge) / width)) + 1)
    return np.concatenate([below, above[1:]])


def _legend_below(ax) -> None:
    """``ax``'s legend under its x-axis labels, outside the axes: inside, "best" placed it across
    the memorization threshold's full-height line whenever the bars left no free corner. Call it
    once the layout is final; the saved image (``bbox_inches="tight"``) grows to hold it."""
    fig = ax.figure
    labels = ax.xaxis.get_tightbbox(fig.canvas.get_renderer())  # tick labels and axis label
    centre = (ax.get_window_extent().x0 + ax.get_window_extent().x1) / 2
    anchor = fig.transFigure.inverted().transform((centre, labels.y0))
    ax.legend(frameon=False, fontsize=9, loc="upper center", bbox_to_anchor=tuple(anchor),
              bbox_transform=fig.transFigure)


def _fraction_text(value: float) -> str:
    """1/3 for 0.333…, as the report's text writes the gap-ratio threshold; else 3 digits."""
    if 0 < value < 1 and abs(1 / value - round(1 / value)) < 1e-6:
        return f"1/{round(1 / value)}"
    return f"{value:.3g}"


class ClosestPairs(NamedTuple):
    """:func:`closest_pairs`' result: n ≤ ``pairs`` pairs, smallest ratio first."""

    samples: np.ndarray       # (n, C, H, W) in [-1, 1], on the training items' scale, clipped to it
    nearest: np.ndarray       # (n, C, H, W) in [-1, 1], each sample's nearest training item
    ratios: np.ndarray        # (n,) their gap ratios d1/d2
    rows: np.ndarray          # (n,) the samples' rows in the audit ("sample" in its table)
    nearest_rows: np.ndarray  # (n,) the nearest training items' rows ("nearest" in its table)


def closest_pairs(report: "MemorizationReport", samples: Any, train: Any, pairs: int = 8) -> ClosestPairs | None:
    """The ``pairs`` samples with the smallest gap ratio and their nearest training items.

    Returns a :class:`ClosestPairs` (ties in sample order); None when the inputs are not images (see
    :func:`memorization_figure`).
    ``pairs`` is a positive integer (a NumPy integer or 0-d tensor too).
    """
    pairs = positive_integer("pairs", pairs)
    ratio = _array(report.ratio, name="report.ratio").ravel()
    order = np.argsort(ratio, kind="stable")[:pairs]
    order = order[np.isfinite(ratio[order])]
    nearest_index = report.nearest.detach().cpu().numpy().ravel()[order]
    layouts = [_image_layout(samples), _image_layout(train)]
    if None in layouts or samples.shape[0] != ratio.size:
        return None
    (sample_axes, sample_shape), (train_axes, train_shape) = layouts
    if sample_shape != train_shape:
        return None
    # only the shown rows leave the device; the range is read where the data lie. The training
    # items alone set the scale: samples that overshoot it are clipped when drawn, where a range
    # taken from both sets had squeezed real images into mid-grey
    picked = _as_images(_array(samples[order.tolist()], name="samples"), sample_axes)
    nearest = _as_images(_array(train[nearest_index.tolist()], name="train"), train_axes)
    lo, hi = float(train.min()), float(train.max())
    if not _is_float(train) and lo >= 0 and 1 < hi <= 255:
        picked, nearest = picked / 127.5 - 1.0, nearest / 127.5 - 1.0       # uint8 pixels
    elif lo >= 0 and hi <= 1.001:
        picked, nearest = 2.0 * picked - 1.0, 2.0 * nearest - 1.0           # [0, 1]
    elif not (lo >= -1.001 and hi <= 1.001):                                # else [-1, 1] as is
        half = max(hi - lo, 1e-12) / 2.0                                    # anything else: stretched
        picked, nearest = (picked - lo) / half - 1.0, (nearest - lo) / half - 1.0
    return ClosestPairs(np.clip(picked, -1.0, 1.0), nearest, ratio[order], order, nearest_index)


def _image_layout(values: Any) -> tuple[tuple[int, ...] | None, tuple[int, ...]] | None:
    """For image-shaped ``values`` (tensor or array), how :func:`_as_images` makes its rows
    (n, C, H, W) (the axes order, None for greyscale (n, H, W)) and that (C, H, W); else None."""
    shape = tuple(getattr(values, "shape", ()))
    if len(shape) == 3:
        return None, (1,) + shape[1:]
    if len(shape) == 4 and shape[1] in (1, 3):
        return (0, 1, 2, 3), shape[1:]
    if len(shape) == 4 and shape[3] in (1, 3):
        return (0, 3, 1, 2), (shape[3],) + shape[1:3]
    return None


def _as_images(rows: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    return rows[:, None] if axes is None else rows.transpose(axes)


def _is_float(values: Any) -> bool:
    if hasattr(values, "is_floating_point"):
        return bool(values.is_floating_point())
    return bool(np.issubdtype(np.asarray(values).dtype, np.floating))
