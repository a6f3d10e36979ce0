"""Report writer and figures: files, embedded figures, escaping, formatting, validation."""
from __future__ import annotations

import base64
import html
import io
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kinetic_fm.studies import figures as F
from kinetic_fm.studies.report import (VERDICTS, Claim, Figure, Section, format_value, markdown_to_html,
                                       write_report)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert('kfm')</script>"


def build_figures(seed: int = 0) -> list[Figure]:
    """One figure from every figure function (and both sample-grid modes), tiny data with NaNs
    and empty groups mixed in."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, 21)
    inc = rng.gamma(2.0, 0.5, (16, 20)) * np.diff(t)
    inc_kts = inc * 0.7
    inc_kts[2, 3] = np.nan
    grid = pd.DataFrame({"config": ["FM", "launch only", "landing only", "balanced"],
                         "fmem": [0.37, 0.36, np.nan, 0.31], "lo": [0.33, 0.32, 0.15, np.nan],
                         "hi": [0.41, 0.40, 0.23, 0.35]})
    return [
        F.energy_profile_figure("profile", f"Energy profiles {XSS}",
                                {"plain FM": (t, inc), "KTS": (t, inc_kts), "empty": (t, np.full((2, 20), np.nan))},
                                log_y=True),
        F.histogram_figure("kpe_hist", "KPE histograms", {"FM": rng.lognormal(3, 0.3, 100),
                                                          "KTS": np.r_[rng.lognormal(2.8, 0.3, 100), np.nan],
                                                          "none": []}, xlabel="KPE", log_x=True),
        F.scatter_figure("kpe_vs_knn", "KPE vs kNN", np.r_[rng.normal(size=80), np.nan], rng.normal(size=81),
                         xlabel="kNN distance", ylabel="KPE", annotation="Spearman ρ = −0.41 [−0.48, −0.33]"),
        F.sample_grid_figure("grid_images", "Samples by KPE", {"lowest KPE": rng.uniform(-1, 1, (10, 1, 8, 8)),
                                                               "highest KPE": rng.uniform(-1, 1, (10, 3, 8, 8)),
                                                               "empty": np.zeros((0, 1, 8, 8))}),
        F.sample_grid_figure("grid_points", "2-D samples", {"low": rng.normal(size=(50, 2)),
                                                            "high": np.r_[rng.normal(size=(50, 2)), [[np.nan, 0]]]}),
        F.bar_figure("fmem_grid", "F_mem across the KTS grid", grid, x="config", y="fmem", low="lo", high="hi",
                     ylabel="F_mem", reference=0.37),
        F.line_figure("fmem_vs_n", "F_mem vs N", [10, 30, 100, 300], {"EFM": [1.0, 0.8, np.nan, 0.1],
                                                                      "model": [0.7, 0.5, 0.3, 0.2]},
                      xlabel="N", ylabel="F_mem", log_x=True, bands={"EFM": ([0.9, 0.7, 0.3, 0.05], [1, 0.9, 0.6, 0.2])}),
        F.sample_run_figure("sample_run", "One kfm sample run", np.r_[inc.sum(1), np.nan], (t, inc), label="FM"),
    ]


def build_claims() -> list[Claim]:
    return [
        Claim("semantics", "Higher-KPE samples have stronger semantics", "CLIP margin 5.7 → 8.9",
              "margin 3.1 → 4.6; Spearman ρ = 0.31", 500, "ρ 95% CI [0.22, 0.40]", "reproduced",
              "same sign and the CI excludes 0"),
        Claim("support", "KPE falls as local support grows", "ρ = −0.65 (kNN, CIFAR-10)", "ρ = −0.12", 300, "",
              "not reproduced", "weak | on digits"),
    ]


def build_report(out_dir: Path) -> tuple[Path, Path, list[Figure]]:
    """The small report both test files check: 2 claims, 2 sections, every figure function."""
    figs = build_figures()
    frame = pd.DataFrame({"config": ["FM", "KTS"], "FD": [16.6812345, 11.27], "F_mem": [0.3734, np.nan],
                          "n": np.array([500, 250], dtype=np.int64)})
    sections = [
        Section("Energy and semantics", f"Some **bold**, `code <b>` and {XSS}.\n\nA second paragraph.",
                tables=[(f"Table {XSS}", frame)], figures=figs[:4]),
        Section("Shaping", "- launch only\n- landing only", tables=[("by config", frame.set_index("config"))],
                figures=figs[4:]),
    ]
    md, html_path = write_report(out_dir, title="kinetic_fm reproduction", intro="Reproduces **the paper**.",
                                 claims=build_claims(), sections=sections,
                                 meta={"config": {"data": "digits", "steps": 100}, "versions": {"torch": "2.13"},
                                       "wall_s": 123.456})
    return md, html_path, figs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    md, html_path, figs = build_report(out)
    return out, md, html_path, figs


def test_writes_markdown_html_and_figures(report):
    out, md, html_path, figs = report
    assert md == out / "report.md" and html_path == out / "report.html"
    assert md.is_file() and html_path.is_file()
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{f.name}.png" for f in figs)
    assert not list(out.rglob("*.tmp")), "atomic writes left temporary files behind"


def test_html_embeds_every_figure_as_the_written_png(report):
    out, _, html_path, figs = report
    page = html_path.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(figs)
    embedded = dict(re.findall(r'<figure id="fig-([a-z0-9_-]+)"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page))
    assert set(embedded) == {f.name for f in figs}
    for fig in figs:
        png = base64.b64decode(embedded[fig.name], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        assert png == (out / "figures" / f"{fig.name}.png").read_bytes() == fig.png


def test_html_is_self_contained(report):
    page = report[2].read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "@import" not in page and "url(" not in page
    for anchor in ("claims", "energy-and-semantics", "shaping", "run"):
        assert f'href="#{anchor}"' in page and f'id="{anchor}"' in page


def test_a_claim_the_data_cannot_measure_reads_not_measured(tmp_path):
    # semantics on an unlabelled set (CelebA) was counted as "inconclusive", which the intro
    # defines as an interval covering zero; it has no interval at all
    claims = [Claim("semantics", "Higher-KPE samples carry stronger semantics", "CLIP margin 5.7 → 8.9",
                    "not measured (no labels)", 64, "", "not measured", "the data set has no class labels"),
              Claim("support", "sparser support", "ρ = -0.65", "ρ = -0.3", 64, "[-0.5, -0.1]", "reproduced")]
    md, html_path = write_report(tmp_path, title="t", intro="", claims=claims, sections=[], meta={})
    text, page = md.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert "2 claims: 1 reproduced, 0 not reproduced, 0 inconclusive, 1 not measured." in text
    assert VERDICTS["not measured"] in text and 'class="verdict not-measured"' in page
    md, _ = write_report(tmp_path / "b", title="t", intro="", claims=claims[1:], sections=[], meta={})
    assert "1 claim: 1 reproduced, 0 not reproduced, 0 inconclusive." in md.read_text(encoding="utf-8")


def test_text_and_captions_are_escaped(report):
    page = report[2].read_text(encoding="utf-8")
    assert XSS not in page
    assert "&lt;script&gt;alert(&#x27;kfm&#x27;)&lt;/script&gt;" in page
    assert "<code>code &lt;b&gt;</code>" in page and "<strong>bold</strong>" in page
    assert "<li>launch only</li>" in page


def test_markdown_claims_table_and_sections(report):
    text = report[1].read_text(encoding="utf-8")
    assert "| study | claim | paper | ours | n | CI | verdict | note |" in text
    assert "| semantics | Higher-KPE samples have stronger semantics |" in text
    assert VERDICTS["reproduced"] in text and VERDICTS["not reproduced"] in text
    assert "weak \\| on digits" in text  # a pipe in a cell does not split the row
    assert text.index("## Claims") < text.index("## Energy and semantics") < text.index("## Shaping") < text.index("## Run")
    assert "| FM | 16.68 | 0.3734 | 500 |" in text and "| KTS | 11.27 | – | 250 |" in text
    assert "![KPE histograms](figures/kpe_hist.png)" in text
    assert "| config.steps | 100 |" in text and "| wall_s | 123.5 |" in text


def test_html_verdict_cells_are_coloured(report):
    page = report[2].read_text(encoding="utf-8")
    assert re.search(r'<td class="verdict reproduced">[^<]*reproduced</td>', page)
    assert re.search(r'<td class="verdict not-reproduced">[^<]*not reproduced</td>', page)


def test_rewrite_is_byte_identical(report, tmp_path):
    _, md, html_path, _ = report
    md2, html2, _ = build_report(tmp_path)
    assert md2.read_bytes() == md.read_bytes()
    assert html2.read_bytes() == html_path.read_bytes()


@pytest.mark.parametrize("value, text", [
    (16.6812345, "16.68"), (0.000123456, "0.0001235"), (123456.7, "123457"), (2.5e7, "2.5e+07"),
    (-3.14159, "-3.142"), (1.0, "1"), (np.float32(0.5), "0.5"), (float("nan"), "–"), (None, "–"),
    (np.int64(12345678), "12345678"), (7, "7"), (True, "True"), ("text", "text"),
    (float("inf"), "∞"), (float("-inf"), "−∞"), (-0.0, "0"), (2000.0, "2000"), (1000.4, "1000"),
    ([np.float64(0.5), "a"], '[0.5, "a"]'),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_markdown_subset():
    assert markdown_to_html("a **b** `c **d**`\nnext line\n\n<e>") == (
        "<p>a <strong>b</strong> <code>c **d**</code> next line</p>\n<p>&lt;e&gt;</p>")
    # a list only when every line of the block is an item
    assert markdown_to_html("- one\n- two\n\n- item\nplain line") == (
        "<ul><li>one</li><li>two</li></ul>\n<p>- item plain line</p>")


def test_invalid_inputs_raise(tmp_path):
    png = F.line_figure("tiny", "c", [0, 1], {"a": [0, 1]}, xlabel="x", ylabel="y").png
    with pytest.raises(ValueError, match="verdict"):
        Claim("s", "c", "p", "o", 1, "", "maybe")
    with pytest.raises(ValueError, match="figure name"):
        Figure("Bad Name", "caption", png)
    with pytest.raises(ValueError, match="PNG"):
        Figure("ok", "caption", b"not a png")
    with pytest.raises(ValueError, match="figure name"):
        F.histogram_figure("bad/name", "c", {"a": [1.0]}, xlabel="x")
    dup = Figure("same", "c", png)
    with pytest.raises(ValueError, match="unique"):
        write_report(tmp_path, title="t", intro="", claims=[], sections=[Section("a", figures=[dup]),
                                                                         Section("b", figures=[dup])], meta={})
    with pytest.raises(ValueError, match="increments"):
        F.energy_profile_figure("p", "c", {"a": (np.linspace(0, 1, 5), np.ones((2, 5)))})
    with pytest.raises(ValueError, match="strictly increasing"):
        F.energy_profile_figure("p", "c", {"a": (np.array([0, 0.5, 0.5, 1.0]), np.ones((2, 3)))})
    with pytest.raises(ValueError, match="same length"):
        F.scatter_figure("s", "c", [1, 2], [1, 2, 3], xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="not a column"):
        F.bar_figure("b", "c", pd.DataFrame({"a": ["x"], "b": [1.0]}), x="a", y="missing")
    with pytest.raises(ValueError, match="shape"):
        F.sample_grid_figure("g", "c", {"a": np.zeros((2, 2, 4, 4))})


def test_power_summary_is_grid_independent():
    """Constant power p on any grid gives increments p·Δt; the summary recovers p at every midpoint."""
    from kinetic_fm.studies.figures import _power_summary

    power = np.array([[1.0], [2.0], [3.0], [4.0], [np.nan]])  # per-sample constant power, one NaN sample
    for times in (np.linspace(0, 1, 11), np.sort(np.r_[0.0, np.random.default_rng(1).uniform(0, 1, 9), 1.0])):
        inc = power * np.diff(times)[None, :]
        mid, mean, low, high, n = _power_summary(times, inc)
        np.testing.assert_allclose(mid, 0.5 * (times[:-1] + times[1:]))
        np.testing.assert_allclose(mean, 2.5)
        np.testing.assert_allclose(low, np.quantile([1, 2, 3, 4], 0.1))
        np.testing.assert_allclose(high, np.quantile([1, 2, 3, 4], 0.9))
        assert n == 4


def test_figures_render_no_data_and_accept_tensors():
    import torch
    from PIL import Image

    empty = [
        F.energy_profile_figure("e1", "c", {"a": (np.linspace(0, 1, 4), np.full((2, 3), np.nan))}),
        F.histogram_figure("e2", "c", {"a": [np.nan], "b": []}, xlabel="x"),
        F.scatter_figure("e3", "c", [np.nan], [1.0], xlabel="x", ylabel="y"),
        F.sample_grid_figure("e4", "c", {"a": np.zeros((0, 2))}),
        F.bar_figure("e5", "c", pd.DataFrame({"x": ["a"], "y": [np.nan]}), x="x", y="y"),
        F.line_figure("e6", "c", [1, 2], {"a": [np.nan, np.nan]}, xlabel="x", ylabel="y"),
        F.scatter_figure("t1", "c", torch.arange(5.0), torch.arange(5.0) ** 2, xlabel="x", ylabel="y"),
        F.sample_grid_figure("t2", "c", {"a": torch.zeros(3, 8, 8)}),  # (n, H, W) greyscale
    ]
    for fig in empty:
        image = Image.open(io.BytesIO(fig.png))
        assert image.format == "PNG" and min(image.size) > 50


@pytest.mark.parametrize("low, high, expected", [
    (15.0, 95.0, ["20", "30", "40", "50", "60", "70", "80", "90"]),     # < 1 decade: every minor tick
    (3.0, 300.0, ["5", "10", "20", "50", "100", "200"]),              # 2 decades: majors, 2 and 5
    (1.0, 1e5, ["1", "10", "100", "1000", "10000", "100000"]),       # 5 decades: majors only
])
def test_log_axis_labels_enough_ticks_to_read(low, high, expected):
    """A narrow log view (the EFM power profile spans ~20–90) must not be left with one label."""
    from kinetic_fm.studies.figures import _log_axis, _new_figure

    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [low, high])
    _log_axis(ax, "y")
    ax.set_ylim(low, high)
    fig.canvas.draw()
    shown = [(tick.get_loc(), tick.label1.get_text()) for tick in
             ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()]
    labels = [text for loc, text in sorted(shown) if text and low <= loc <= high]
    assert labels == expected


def test_sample_grid_mosaic_layout():
    """8 columns, 1-pixel white gutters, pixels mapped from [-1, 1] to [0, 1]."""
    from kinetic_fm.studies.figures import _mosaic

    images = np.stack([np.full((1, 2, 3), v) for v in np.linspace(-1, 1, 10)])
    canvas = _mosaic(images, 8)
    assert canvas.shape == (2 * 3 + 1, 8 * 4 + 1, 1)
    assert canvas[1, 1, 0] == 0.0  # image 0 (value -1) at the top left
    np.testing.assert_allclose(canvas[1, 1 + 4 * 7, 0], (np.linspace(-1, 1, 10)[7] + 1) / 2)
    np.testing.assert_allclose(canvas[4, 1 + 4, 0], 1.0)  # image 9 (value +1) on row 2, column 2
    assert canvas[0].min() == 1.0 and canvas[:, 0].min() == 1.0  # gutters
    assert np.all(canvas[4:6, 9:, 0] == 1.0)  # unused cells stay white


def test_import_kinetic_fm_does_not_import_matplotlib():
    code = "import kinetic_fm, sys; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _audit(samples, train):
    import kinetic_fm as kfm

    return kfm.memorization(samples, train, bootstrap=50)


def test_closest_pairs_show_the_smallest_ratios_beside_their_nearest_training_items():
    """Channels-last uint8 images: copies come first (ratio 0), then a noisy copy, each beside
    the training image the brute force finds nearest, pixels mapped x/127.5 − 1."""
    import torch

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    noisy = np.clip(train[7].astype(int) + rng.integers(-3, 4, size=(8, 8, 3)), 0, 255).astype(np.uint8)
    samples = np.stack([rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), train[5], noisy, train[2]])
    report = _audit(torch.from_numpy(samples), torch.from_numpy(train))
    s64, t64 = torch.from_numpy(samples).double().flatten(1), torch.from_numpy(train).double().flatten(1)
    two = (s64[:, None] - t64[None]).pow(2).sum(dim=2).sqrt().topk(2, dim=1, largest=False)
    want_ratio = (two.values[:, 0] / two.values[:, 1]).numpy()

    shown, nearest, ratios, rows, nearest_rows = F.closest_pairs(report, samples, train, pairs=3)
    order = np.argsort(want_ratio, kind="stable")[:3]
    np.testing.assert_array_equal(order, [1, 3, 2])                  # two exact copies, then the noisy one
    # the rows the figure names them by: each sample's in the audit, its nearest item's in train
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(nearest_rows, [5, 2, 7])
    np.testing.assert_allclose(ratios, want_ratio[order], rtol=0, atol=1e-12)
    assert shown.shape == nearest.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(shown, samples[order].transpose(0, 3, 1, 2) / 127.5 - 1.0)
    wanted_train = train[two.indices[order, 0].numpy()].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(nearest, wanted_train / 127.5 - 1.0)
    np.testing.assert_array_equal(wanted_train[:2], samples[[1, 3]].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("low, high, mapped", [
    (-1.0, 1.0, (-1.0, 1.0)),       # [-1, 1] data shown as is
    (0.0, 1.0, (-1.0, 1.0)),        # [0, 1] data: 2x − 1
    (0.0, 0.5, (-1.0, 0.0)),        # [0, 1] data that stays dark is not brightened
    (-3.0, 1000.0, (-1.0, 1.0)),    # anything else: stretched
    (0.0, 1.2, (-1.0, 1.0)),        # a little above 1 is not [0, 1] data: stretched too
])
def test_closest_pairs_pixel_range(low, high, mapped):
    import torch

    g = torch.Generator().manual_seed(1)
    train = torch.rand(10, 1, 4, 4, generator=g) * (high - low) + low
    train[0].fill_(low)
    train[1].fill_(high)
    report = _audit(train[:2], train)
    shown, nearest, *_ = F.closest_pairs(report, train[:2], train, pairs=2)
    assert [float(shown.min()), float(shown.max())] == pytest.approx(list(mapped))
    np.testing.assert_allclose(shown, nearest)                        # each sample is its own nearest


def test_closest_pairs_keep_the_training_scale_when_samples_overshoot_it():
    """An undertrained net's samples spill far outside the data's [-1, 1]: the training items are
    still drawn as they are (black stays -1, white 1), and the samples clipped to that scale."""
    import torch

    g = torch.Generator().manual_seed(4)
    train = torch.rand(12, 1, 5, 5, generator=g) * 2 - 1
    train[:, :, 0, 0], train[:, :, 0, 1] = -1.0, 1.0
    samples = 4.0 * train[:3] + 0.1 * torch.randn(3, 1, 5, 5, generator=g)   # spans about [-4, 4]
    report = _audit(samples, train)
    shown, nearest, *_ = F.closest_pairs(report, samples, train, pairs=3)
    wanted = train[report.nearest[torch.from_numpy(np.argsort(report.ratio.numpy(), kind="stable")[:3])]]
    np.testing.assert_array_equal(nearest, wanted.numpy())
    np.testing.assert_array_equal(shown, np.clip(samples[np.argsort(report.ratio.numpy(), kind="stable")[:3]]
                                                 .numpy(), -1.0, 1.0))


def test_memorization_figure_with_and_without_images():
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(2)
    train = torch.rand(30, 3, 6, 6, generator=g) * 2 - 1
    samples = torch.cat([train[:4], torch.rand(6, 3, 6, 6, generator=g) * 2 - 1])
    report = _audit(samples, train)
    with_pairs = F.memorization_figure("mem", "c", report, samples, train, pairs=5)
    alone = F.memorization_figure("mem", "c", report)
    flat = F.memorization_figure("mem", "c", report, samples.flatten(1), train.flatten(1))   # not images
    widths = [Image.open(io.BytesIO(f.png)).size[0] for f in (with_pairs, alone, flat)]
    assert widths[0] > widths[1] == widths[2]
    assert F.closest_pairs(report, samples.flatten(1), train.flatten(1)) is None
    with pytest.raises(ValueError, match="pairs"):
        F.memorization_figure("mem", "c", report, samples, train, pairs=0)
    for seeds in (np.arange(9), np.linspace(0, 1, 10)):                 # one integer per audited sample
        with pytest.raises(ValueError, match=r"seeds must hold one integer per audited sample \(10\)"):
            F.memorization_figure("mem", "c", report, samples, train, seeds=seeds)


def test_memorization_figure_names_the_pairs_by_seed_where_the_table_holds_no_rows(monkeypatch):
    # the memorizer study's figures read "sample i" beside a table keyed by seed, with no sample column
    import torch

    ticks, render = [], F._render
    monkeypatch.setattr(F, "_render", lambda fig, *args: (ticks.append([t.get_text() for t in fig.axes[1]
                                                                         .get_xticklabels()]), render(fig, *args))[1])
    g = torch.Generator().manual_seed(5)
    train = torch.rand(12, 1, 6, 6, generator=g) * 2 - 1
    samples = torch.cat([torch.rand(5, 1, 6, 6, generator=g) * 2 - 1, train[[7, 2]] + 0.01])
    report = _audit(samples, train)
    table = pd.DataFrame({"seed": np.arange(500, 507), "gap_ratio": report.ratio.numpy()})  # as a study keeps it
    F.memorization_figure("mem", "c", report, samples, train, pairs=3, seeds=table["seed"], sample_rows=False)
    shown = table.sort_values("gap_ratio", kind="stable").head(3)
    want = [f"{row.gap_ratio:.2f}\nseed {row.seed}\nnearest {int(report.nearest[row.Index])}"
            for row in shown.itertuples()]
    assert ticks == [want] and sorted(int(report.nearest[i]) for i in shown.index[:2]) == [2, 7]   # the copies
    with pytest.raises(ValueError, match="sample_rows=False names each sample by its seed: give seeds"):
        F.memorization_figure("mem", "c", report, samples, train, sample_rows=False)


def test_memorization_histogram_counts_samples_in_whole_numbers(monkeypatch):
    # one or two audited samples: the y axis ("samples") read 0.0, 0.2, ..., 1.0
    import torch

    drawn = []
    render = F._render
    monkeypatch.setattr(F, "_render", lambda fig, *args: (drawn.append(fig.axes[0].get_yticks()),
                                                          render(fig, *args))[1])     # it clears the figure
    train = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    F.memorization_figure("mem", "c", _audit(train[:1] + 0.1, train))
    ticks = drawn[0]
    assert len(ticks) >= 2 and all(float(tick).is_integer() for tick in ticks), ticks


def test_memorization_figure_of_bfloat16_images_is_that_of_their_float32_values():
    # NumPy has no bfloat16: kfm memorization --figure on bf16 samples (a half-precision net's) failed
    # with a traceback after the audit ("Got unsupported ScalarType BFloat16")
    import torch

    g = torch.Generator().manual_seed(3)
    train = (torch.rand(30, 3, 6, 6, generator=g) * 2 - 1).bfloat16()
    samples = torch.cat([train[:4], (torch.rand(6, 3, 6, 6, generator=g) * 2 - 1).bfloat16()])
    report = _audit(samples, train)
    drawn = F.memorization_figure("mem", "c", report, samples, train, pairs=5)
    assert drawn.png == F.memorization_figure("mem", "c", report, samples.float(), train.float(), pairs=5).png


def test_memorization_figure_splits_by_the_reports_flags_not_by_the_rounded_ratio(monkeypatch):
    # an exact tie d2² = 9·d1² reads 0.33333333333333326 < 1/3 but is not memorized: the legend said
    # "memorized: 1/1" under "F_mem = 0.000" (helper-135)
    import matplotlib.axes
    import torch

    import kinetic_fm as kfm

    report = kfm.memorization(torch.tensor([[[[100, 100], [100, 100]]]], dtype=torch.uint8),
                              torch.tensor([[[[105, 102], [101, 101]]], [[[115, 106], [103, 103]]]], dtype=torch.uint8),
                              interval="wilson")
    assert float(report.ratio[0]) < report.threshold and not bool(report.memorized[0])
    labels, hist = [], matplotlib.axes.Axes.hist
    monkeypatch.setattr(matplotlib.axes.Axes, "hist", lambda self, *a, **k: (labels.append(k.get("label")),
                                                                             hist(self, *a, **k))[1])
    F.memorization_figure("mem", "c", report)
    assert labels == ["not memorized: 1/1", "memorized: 0/1"]


@pytest.mark.parametrize("threshold", [0.05, 1 / 3, 0.5, 0.95])
@pytest.mark.parametrize("images", [False, True])
def test_memorization_legend_keeps_clear_of_the_threshold_line(monkeypatch, threshold, images):
    # with no free corner "best" put the legend across the dashed threshold line (at 1/3 whenever
    # nothing was memorized); checked in display coordinates after an Agg draw
    import torch

    import kinetic_fm as kfm

    g = torch.Generator().manual_seed(0)
    train = torch.rand(40, 1, 6, 6, generator=g)
    samples = torch.rand(20, 1, 6, 6, generator=g)      # nothing memorized: ratios near 1
    report = kfm.memorization(samples, train, threshold=threshold, bootstrap=50)
    seen, render = [], F._render

    def inspect(fig, name, caption):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
        x = ax.transData.transform((threshold, 0.0))[0]
        # the line runs from the axes' bottom to its top at x
        seen.append(bool(not (legend.x0 <= x <= legend.x1 and legend.y0 < frame.y1 and legend.y1 > frame.y0)))
        seen.append(bool(frame.x0 < x < frame.x1))           # the line is there to be missed
        # the saved image holds the legend whole ("tight" grows it); within 0.01 px, as the two
        # boxes' shared edge differs in the last bits (matplotlib 3.7: 1e-14 px)
        whole = fig.get_tightbbox(fig.canvas.get_renderer()).transformed(fig.dpi_scale_trans)
        seen.append(bool(whole.x0 <= legend.x0 + 0.01 and legend.x1 <= whole.x1 + 0.01
                         and whole.y0 <= legend.y0 + 0.01))
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", inspect)
    F.memorization_figure("mem", "c", report, *((samples, train) if images else ()))
    assert seen == [True, True, True]


@pytest.mark.parametrize("threshold", [1 / 3, 0.05, 0.5])
def test_memorization_histogram_bars_stop_at_the_threshold(monkeypatch, threshold):
    # with 40 equal bins 1/3 fell inside [0.325, 0.35): a memorized bar poked out past the dashed
    # threshold line, as if samples above it were counted as copies
    import matplotlib.axes
    import torch

    import kinetic_fm as kfm

    g = torch.Generator().manual_seed(1)
    train = torch.rand(40, 1, 6, 6, generator=g)
    samples = torch.cat([train[:10] + 0.01 * torch.rand(10, 1, 6, 6, generator=g),
                         torch.rand(10, 1, 6, 6, generator=g)])
    report = kfm.memorization(samples, train, threshold=threshold, interval="wilson")
    assert 0 < int(report.memorized.sum()) < 20                      # both kinds drawn
    drawn, hist = [], matplotlib.axes.Axes.hist
    monkeypatch.setattr(matplotlib.axes.Axes, "hist", lambda self, x, *a, **k: (
        drawn.append((k.get("label"), np.asarray(x), np.asarray(k["bins"]))), hist(self, x, *a, **k))[1])
    F.memorization_figure("mem", "c", report)
    for label, ratios, bins in drawn:
        assert bins[0] == 0.0 and bins[-1] == 1.0 and np.all(np.diff(bins) > 0.015) and np.all(np.diff(bins) < 0.04)
        assert np.isclose(bins, threshold, rtol=0, atol=1e-12).any(), label
        edge = bins[np.searchsorted(bins, threshold - 1e-12)]
        counts, _ = np.histogram(ratios, bins)
        # every bar lies wholly on one side of the line: memorized ones left, the rest right
        assert (counts[bins[:-1] >= edge].sum() == 0) if label.startswith("memorized") else \
            (counts[bins[1:] <= edge].sum() == 0), label


def test_energy_profile_marks_a_time_with_a_labelled_vertical_line(monkeypatch):
    # the KTS profile's caption said "the landing starts at t = τ = 0.6" with nothing drawn there
    seen, render = [], F._render

    def inspect(fig, name, caption):
        ax = fig.axes[0]
        vertical = [ln for ln in ax.get_lines() if np.allclose(ln.get_xdata(), 0.6) and len(ln.get_xdata()) == 2]
        seen.append(([ln.get_label() for ln in vertical], [t.get_text() for t in ax.get_legend().get_texts()]))
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", inspect)
    times = np.linspace(0.0, 1.0, 11)
    increments = np.full((3, 10), 0.1)
    F.energy_profile_figure("p", "c", {"plain FM": (times, increments), "KTS": (times, 2 * increments)},
                            marks={"τ = 0.6": 0.6})
    F.energy_profile_figure("p", "c", {"plain FM": (times, increments)})
    (marked, legend), (unmarked, _) = seen
    assert marked == ["τ = 0.6"] and legend == ["plain FM (n=3)", "KTS (n=3)", "τ = 0.6"]
    assert unmarked == []
    for bad in (1.5, float("nan"), "0.6"):
        with pytest.raises(ValueError, match=r"marks\['τ'\] must be a time in \[0, 1\]"):
            F.energy_profile_figure("p", "c", {"plain FM": (times, increments)}, marks={"τ": bad})


def _figure_integer_sites():
    """(argument, call(value)) for the figures' integer settings; each call returns something
    comparable (PNG bytes, arrays) that the plain int 3 determines."""
    import torch

    g = torch.Generator().manual_seed(2)
    train = torch.rand(12, 1, 4, 4, generator=g) * 2 - 1
    samples = torch.cat([train[:3], torch.rand(4, 1, 4, 4, generator=g) * 2 - 1])
    report = _audit(samples, train)
    times = np.array([[0.0, 0.25, 1.0, np.nan], [0.0, 0.5, 0.75, 1.0]])
    increments = np.array([[1.0, 1.5, 0.0], [3.0, 0.5, 2.0]])
    return [
        ("bins", lambda v: F.sample_run_figure("d", "c", increments.sum(1), (times, increments), bins=v).png),
        ("columns", lambda v: F.sample_grid_figure("g", "c", {"a": samples.numpy()}, columns=v).png),
        ("pairs", lambda v: F.memorization_figure("m", "c", report, samples, train, pairs=v).png),
        ("pairs", lambda v: F.closest_pairs(report, samples, train, pairs=v)[2].tolist()),
    ]


@pytest.mark.parametrize("site", range(4))
def test_figure_integer_settings_take_numpy_integers_and_name_the_range(site):
    # bins= and pairs= refused np.int64(3) ("must be a positive integer, got np.int64(3)"),
    # columns=2.5 and closest_pairs(pairs=2.5) failed inside NumPy with a TypeError, and
    # bins was checked only for per-sample grids
    import torch

    from kinetic_fm.checks import check_integer

    name, call = _figure_integer_sites()[site]
    want = call(3)
    for value in (np.int64(3), np.array(3), torch.tensor(3)):
        assert call(value) == want
    for bad in (0, 2.5, True, np.float64(3.0), torch.tensor(2.5)):
        with pytest.raises(ValueError) as refusal:
            check_integer(name, bad, 1)
        with pytest.raises(ValueError, match=f"^{re.escape(str(refusal.value))}$"):
            call(bad)
    with pytest.raises(ValueError, match=r"^bins must be a positive integer, got 0$"):
        F.sample_run_figure("d", "c", [1.0, 2.0], (np.linspace(0, 1, 3), np.ones((2, 2))), bins=0)


def test_a_claim_reads_its_sample_size_with_the_shared_integer_check():
    # a 0-d array or tensor was refused, and an np.int64 was kept as it came
    import torch

    for n in (np.int64(300), np.array(300), torch.tensor(300)):
        claim = Claim("s", "c", "p", "o", n, "", "reproduced")
        assert claim.n == 300 and type(claim.n) is int
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=f"^Claim.n must be a non-negative integer, got {bad!r}$"):
            Claim("s", "c", "p", "o", bad, "", "reproduced")


def test_line_figures_over_integer_x_get_integer_ticks(monkeypatch):
    drawn = {}
    render = F._render

    def keep(fig, name, caption):
        drawn[name] = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 5]
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", keep)
    F.line_figure("quintiles", "c", np.arange(1, 6), {"a": [3.0, 1.0, 0.5, 1.0, 3.0]}, xlabel="x", ylabel="y")
    F.line_figure("times", "c", np.linspace(1, 5, 9), {"a": np.arange(9.0)}, xlabel="x", ylabel="y")
    assert drawn["quintiles"] and all(float(t).is_integer() for t in drawn["quintiles"])
    assert not all(float(t).is_integer() for t in drawn["times"])   # fractional x keeps fractional ticks


def _drawn_axes(monkeypatch):
    """Record, per figure name, each axes' labels, scales, texts and artists as rendered."""
    drawn = {}
    render = F._render

    def keep(fig, name, caption):
        drawn[name] = [{"xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "xscale": ax.get_xscale(),
                        "yscale": ax.get_yscale(), "ylim": ax.get_ylim(), "title": ax.get_title(),
                        "texts": [t.get_text() for t in ax.texts], "patches": len(ax.patches),
                        "fills": len(ax.collections),
                        "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
                        "legend_title": ax.get_legend().get_title().get_text() if ax.get_legend() else "",
                        "position": tuple(ax.get_position().bounds),
                        "x_shared": len(ax.get_shared_x_axes().get_siblings(ax))}
                       for ax in fig.axes]
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", keep)
    return drawn


def test_log_axes_say_so_and_narrow_spans_stay_linear(monkeypatch):
    """Plain tick labels (20, 30, 50) on a log axis read as linear: the label must say log. Data
    within half a decade (KPE 30–60) gain nothing from a log axis, which there may label one tick."""
    drawn = _drawn_axes(monkeypatch)
    rng = np.random.default_rng(0)
    F.scatter_figure("wide", "c", np.geomspace(1, 1000, 50), rng.normal(size=50), xlabel=F.KPE_LABEL, ylabel="y",
                     log_x=True)
    F.scatter_figure("narrow", "c", np.linspace(30, 60, 50), rng.normal(size=50), xlabel=F.KPE_LABEL, ylabel="y",
                     log_x=True)
    F.scatter_figure("decade", "c", np.linspace(10, 60, 50), rng.normal(size=50), xlabel=F.KPE_LABEL, ylabel="y",
                     log_x=True)   # 0.78 decades: log
    t = np.linspace(0, 1, 11)
    F.energy_profile_figure("spike", "c", {"a": (t, np.geomspace(1, 500, 10)[None] * 0.1)}, log_y=True)
    wide, narrow, spike = drawn["wide"][0], drawn["narrow"][0], drawn["spike"][0]
    assert wide["xscale"] == "log" and wide["xlabel"] == f"{F.KPE_LABEL} {F.LOG_NOTE}"
    assert narrow["xscale"] == "linear" and narrow["xlabel"] == F.KPE_LABEL
    assert drawn["decade"][0]["xscale"] == "log"
    assert spike["yscale"] == "log" and spike["ylabel"] == f"{F.POWER_LABEL} {F.LOG_NOTE}"
    assert spike["xlabel"] == "t   (0 = noise, 1 = data)"


def test_line_figure_names_its_reference_line_in_the_legend(monkeypatch):
    drawn = _drawn_axes(monkeypatch)
    steps = np.array([1, 10, 100, 1000])
    F.line_figure("ref", "c", steps, {"share": [0.1, 0.09, 0.1, 0.12]}, xlabel="x", ylabel="y", reference=0.1,
                  reference_label="uniform in t")
    assert drawn["ref"][0]["legend"] == ["share", "uniform in t"]


def test_line_panels_figure_gives_each_quantity_its_own_axis_and_label(monkeypatch):
    """A fraction of samples and a fraction of energy on one axis read as one quantity: each panel
    has its own y label, lines, band and reference; the x axis and its label repeat on both."""
    drawn = _drawn_axes(monkeypatch)
    steps = np.array([1, 10, 100, 1000])
    copied = F.LinePanel({"F_mem": [0.0, 0.2, 0.5, 0.8], "span F_mem": [0.0, 0.3, 0.6, 0.9]},
                         "F_mem (fraction of samples copied)",
                         bands={"F_mem": (np.zeros(4), np.full(4, 0.9))})
    share = F.LinePanel({"late share": [0.10, 0.11, 0.13, 0.20]}, "share of energy", reference=0.1,
                        reference_label="uniform in t")
    F.line_panels_figure("panels", "c", steps, [copied, share], xlabel="training step", log_x=True)
    left, right = drawn["panels"]
    assert (left["ylabel"], right["ylabel"]) == ("F_mem (fraction of samples copied)", "share of energy")
    assert left["legend"] == ["F_mem", "span F_mem"] and right["legend"] == ["late share", "uniform in t"]
    assert left["fills"] == 1 and right["fills"] == 0                       # the band stays on its panel
    assert left["xlabel"] == right["xlabel"] == f"training step {F.LOG_NOTE}" and left["xscale"] == "log"
    with pytest.raises(ValueError, match=r"panels\[1\]\.bands names labels missing from panels\[1\]\.ys: \['b'\]"):
        F.line_panels_figure("bad", "c", steps, [share, F.LinePanel({"a": np.ones(4)}, "y", bands={"b": (0, 1)})],
                             xlabel="x")
    with pytest.raises(ValueError, match="at least one LinePanel"):
        F.line_panels_figure("none", "c", steps, [], xlabel="x")


def test_stacked_line_panels_share_x_and_take_each_panels_own_log_axis(monkeypatch):
    """Two quantities in other units on twin log axes cross where it means nothing: stacked panels, one
    x axis (named once, under the lowest), each y axis log or not as its panel asks and labelled."""
    drawn = _drawn_axes(monkeypatch)
    steps = np.array([1, 10, 100, 1000])
    kpe = F.LinePanel({"mean KPE": [3.0, 10.0, 30.0, 45.0]}, "mean KPE", log_y=True)
    fd = F.LinePanel({"FD": [850.0, 400.0, 150.0, 80.0]}, "FD", log_y=True)
    share = F.LinePanel({"share": [0.1, 0.11, 0.12, 0.13]}, "share")
    F.line_panels_figure("stacked", "c", steps, [kpe, fd, share], xlabel="training step", log_x=True, stacked=True)
    top, middle, bottom = drawn["stacked"]
    assert (top["ylabel"], middle["ylabel"], bottom["ylabel"]) == (f"mean KPE {F.LOG_NOTE}", f"FD {F.LOG_NOTE}",
                                                                   "share")
    assert (top["yscale"], middle["yscale"], bottom["yscale"]) == ("log", "log", "linear")
    assert top["xlabel"] == middle["xlabel"] == "" and bottom["xlabel"] == f"training step {F.LOG_NOTE}"
    assert top["position"][1] > middle["position"][1] > bottom["position"][1]     # one above the other
    assert top["x_shared"] == 3 and top["legend"] == ["mean KPE"] and middle["legend"] == ["FD"]


def test_bar_figure_points_fit_the_values_and_name_groups_and_reference(monkeypatch):
    """F_mem 0.71–0.84 as bars from zero hides the differences; dots on a fitted axis show them."""
    drawn = _drawn_axes(monkeypatch)
    grid = pd.DataFrame({"setting": ["plain FM", "landing only", "plain FM · heun", "balanced · heun"],
                         "group": ["main", "main", "solver", "solver"], "F_mem": [0.82, 0.71, 0.84, 0.80],
                         "lo": [0.78, 0.67, 0.81, 0.76], "hi": [0.85, 0.75, 0.87, 0.83]})
    F.bar_figure("dots", "c", grid, x="setting", y="F_mem", low="lo", high="hi", ylabel="F_mem",
                 reference=0.82, reference_label="plain FM", points=True, group="group")
    F.bar_figure("bars", "c", grid, x="setting", y="F_mem", xlabel="setting")
    dots, bars = drawn["dots"][0], drawn["bars"][0]
    assert dots["patches"] == 0 and dots["ylim"][0] > 0.5
    assert dots["texts"] == ["main", "solver"] and dots["legend"] == ["plain FM = 0.82"]
    assert bars["patches"] == 4 and bars["ylim"][0] == 0 and bars["xlabel"] == "setting"


def test_memorization_figure_names_its_interval_threshold_and_both_groups(monkeypatch):
    import torch

    drawn = _drawn_axes(monkeypatch)
    g = torch.Generator().manual_seed(3)
    train = torch.rand(30, 1, 6, 6, generator=g) * 2 - 1
    report = _audit(torch.cat([train[:4], torch.rand(6, 1, 6, 6, generator=g) * 2 - 1]), train)
    F.memorization_figure("mem", "c", report)
    (hist,) = drawn["mem"]
    assert hist["title"].startswith("F_mem = 0.400 (95% bootstrap CI ")
    assert hist["legend"] == ["not memorized: 6/10", "memorized: 4/10", "threshold d1/d2 = 1/3"]


def test_memorization_figure_gives_no_zero_width_interval_when_nothing_is_memorized(monkeypatch):
    """0 of 400 memorized: every bootstrap resample is 0, so its interval [0, 0] claims certainty;
    the title shows the Wilson interval, 0 to z²/(n + z²) at 0 of n."""
    import torch

    drawn = _drawn_axes(monkeypatch)
    g = torch.Generator().manual_seed(5)
    report = _audit(torch.randn(400, 1, 4, 4, generator=g), torch.randn(50, 1, 4, 4, generator=g))
    assert report.fraction == 0.0 and report.ci == (0.0, 0.0)
    F.memorization_figure("mem", "c", report)
    z2 = 1.959963984540054 ** 2
    assert drawn["mem"][0]["title"] == f"F_mem = 0.000 (95% Wilson CI 0.000–{z2 / (400 + z2):.3f})"


def test_crowded_energy_profiles_outline_their_bands(monkeypatch):
    """Four overlapping filled bands blend into one grey; beyond two, bands are dotted outlines."""
    drawn = _drawn_axes(monkeypatch)
    t = np.linspace(0, 1, 11)
    inc = np.random.default_rng(0).gamma(2.0, 0.5, (8, 10)) * 0.1
    F.energy_profile_figure("two", "c", {k: (t, inc) for k in "ab"})
    F.energy_profile_figure("four", "c", {k: (t, inc) for k in "abcd"})
    assert drawn["two"][0]["fills"] == 2 and drawn["four"][0]["fills"] == 0


# ----------------------------------------------------------------------------------------------
# kfm.plot_energy_profile: a sampling run's power curve for notebooks


@pytest.fixture(scope="module")
def profiled_runs():
    import torch

    import kinetic_fm as kfm

    field = kfm.GaussianTarget(mean=2.0, std=0.5)
    plain = kfm.sample(field, seeds=range(16), shape=(3,), steps=12, profile=True)
    shaped = kfm.sample(field, seeds=range(16), shape=(3,), steps=12, profile=True,
                        shaping=kfm.KTS(alpha0=0.3, beta0=0.05))
    return {"plain FM": plain, "KTS": shaped, "x0": torch.zeros(1)}


def test_plot_energy_profile_draws_the_results_profiles(profiled_runs, tmp_path):
    import kinetic_fm as kfm

    runs = {k: profiled_runs[k] for k in ("plain FM", "KTS")}
    figure = kfm.plot_energy_profile(runs, title="Gaussian target")
    # the same figure as the report's, drawn from each result's own grid and increments
    direct = F.energy_profile_figure("energy_profile", "", {k: (r.times, r.profile) for k, r in runs.items()},
                                     title="Gaussian target")
    assert figure.png == direct.png
    alone = kfm.plot_energy_profile(runs["KTS"])
    assert alone.png != figure.png and alone.png.startswith(b"\x89PNG")
    assert figure._repr_png_() == figure.png                  # shown inline by Jupyter
    path = figure.save(tmp_path / "deep" / "profile.png")
    assert path.read_bytes() == figure.png
    with pytest.raises(ValueError, match="must end in .png"):
        figure.save(tmp_path / "profile.pdf")


def test_plot_energy_profile_names_eta_only_where_a_gain_acts(profiled_runs, monkeypatch):
    # the axis read ½η²‖v‖² for plain FM too: a SampleResult did not say whether a gain acted
    import kinetic_fm as kfm

    assert (profiled_runs["plain FM"].shaped, profiled_runs["KTS"].shaped) == (False, True)
    drawn = _drawn_axes(monkeypatch)
    for runs, label in ((profiled_runs["plain FM"], F.PLAIN_POWER_LABEL), (profiled_runs["KTS"], F.POWER_LABEL),
                        ({k: profiled_runs[k] for k in ("plain FM", "KTS")}, F.POWER_LABEL)):
        kfm.plot_energy_profile(runs)
        assert [ax["ylabel"] for ax in drawn["energy_profile"]] == [label]


def test_every_power_panel_says_what_its_line_and_band_are(profiled_runs, monkeypatch):
    # kfm.plot_energy_profile (README's power.png) never said what the shaded band was; the CLI's
    # figure said it in its panel title. Each power panel's legend says it now, in the same words
    import kinetic_fm as kfm

    drawn = _drawn_axes(monkeypatch)
    runs = {k: profiled_runs[k] for k in ("plain FM", "KTS")}
    kfm.plot_energy_profile(runs, title="Gaussian target")
    kfm.plot_energy_profile(profiled_runs["KTS"], name="alone")
    res = profiled_runs["KTS"]
    F.sample_run_figure("run", "", res.kpe, (res.times, res.profile))
    t = np.linspace(0, 1, 11)
    F.energy_profile_figure("four", "c", {k: (t, np.ones((3, 10))) for k in "abcd"})   # bands outlined, dotted
    for name in ("energy_profile", "alone", "run", "four"):
        power = drawn[name][0]
        assert power["legend_title"] == "mean, 10–90 % band", (name, power)
        assert "10–90" not in power["title"], power   # said once, in the legend
    assert drawn["energy_profile"][0]["title"] == "Gaussian target"


def test_plot_energy_profile_puts_dopri5_runs_on_shared_steps():
    import kinetic_fm as kfm

    import torch

    drift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    adaptive = kfm.sample(lambda x, t: drift.expand_as(x) * (1 + 0 * t[:, None]), seeds=range(4), shape=(3,),
                          solver="dopri5", dtype=torch.float64, profile=True)
    # a constant velocity: the shared-step power is ½‖drift‖² = KPE, whatever steps dopri5 took
    times, increments = F._on_shared_grid(adaptive.times.numpy(), adaptive.profile.numpy(), 100)
    power = increments / np.diff(times)
    np.testing.assert_allclose(power, np.repeat(adaptive.kpe.numpy()[:, None], 100, axis=1), rtol=1e-9)
    figure = kfm.plot_energy_profile({"ode": adaptive})
    assert figure.png == F.energy_profile_figure("energy_profile", "", {"ode": (times, increments)}, shaped=False).png


def test_plot_energy_profile_says_what_is_missing(profiled_runs):
    import kinetic_fm as kfm

    field = kfm.GaussianTarget(mean=2.0, std=0.5)
    with pytest.raises(ValueError, match=r"profile=True"):
        kfm.plot_energy_profile(kfm.sample(field, seeds=range(4), shape=(3,), steps=5))
    with pytest.raises(TypeError, match=r"results\['x0'\] must be a SampleResult"):
        kfm.plot_energy_profile({"x0": profiled_runs["x0"]})
    with pytest.raises(TypeError, match="non-empty dict"):
        kfm.plot_energy_profile({})


def test_sample_run_figure_draws_one_or_two_panels_and_chooses_log_axes(monkeypatch):
    """The kfm sample --figure: the KPE histogram, beside the power curve when a profile is given;
    an axis goes logarithmic when its values span two decades (a late 1/(1 − t)² power spike)."""
    from PIL import Image

    chosen = {}

    def spy(name, draw):
        def wrapper(ax, values, **kwargs):
            chosen[name] = kwargs.get("log_y", kwargs.get("log_x"))
            return draw(ax, values, **kwargs)
        return wrapper

    monkeypatch.setattr(F, "_draw_power", spy("power", F._draw_power))
    monkeypatch.setattr(F, "_draw_histogram", spy("kpe", F._draw_histogram))
    t = np.linspace(0.0, 1.0, 41)
    mid = 0.5 * (t[:-1] + t[1:])
    flat = np.outer(np.linspace(1.0, 2.0, 8), np.diff(t))                      # power 1..2: linear axes
    spike = np.outer(np.linspace(1.0, 2.0, 8), np.diff(t) / (1.0 - mid) ** 2)  # power 1 -> 1600: log
    one = Image.open(io.BytesIO(F.sample_run_figure("h", "c", flat.sum(1)).png)).size
    assert chosen == {"kpe": False}
    two = Image.open(io.BytesIO(F.sample_run_figure("p", "c", flat.sum(1), (t, flat)).png)).size
    assert chosen == {"kpe": False, "power": False}
    assert two[0] > 1.7 * one[0] and abs(two[1] - one[1]) < 0.3 * one[1]
    F.sample_run_figure("s", "c", [1.0, 50.0, 300.0], (t, spike))
    assert chosen == {"kpe": True, "power": True}
    F.sample_run_figure("z", "c", [0.0, 500.0], (t, flat))                     # a zero KPE: no log axis
    assert chosen["kpe"] is False
    with pytest.raises(ValueError, match="increments"):
        F.sample_run_figure("b", "c", [1.0], (t, np.ones((2, 5))))


def test_per_sample_grids_go_onto_shared_bins_keeping_the_energy():
    """dopri5's profiles: each sample's power is constant within its own steps; a shared bin gets
    the energy of the parts of the steps it covers."""
    from kinetic_fm.studies.figures import _on_shared_grid

    times = np.array([[0.0, 0.25, 1.0, np.nan],       # power 4 on [0, 0.25), 2 on [0.25, 1]
                      [0.0, 0.5, 0.75, 1.0],          # power 6, 2, 8
                      [0.0, 0.5, np.nan, np.nan]])    # stopped at t = 0.5 (a flagged sample)
    increments = np.array([[1.0, 1.5, 0.0], [3.0, 0.5, 2.0], [1.0, 0.0, 0.0]])
    grid, shared = _on_shared_grid(times, increments, 4)
    np.testing.assert_array_equal(grid, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(shared[0], [1.0, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(shared[1], [1.5, 1.5, 0.5, 2.0])
    assert np.isnan(shared[2]).all()
    np.testing.assert_allclose(shared[:2].sum(1), increments[:2].sum(1))
    fig = F.sample_run_figure("d", "c", increments.sum(1), (times, increments), bins=4)
    assert fig.png.startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="per-sample profiles"):
        _on_shared_grid(times, increments[:, :2], 4)


def test_html_table_cells_render_code_spans_as_the_markdown_does(tmp_path):
    """A `code` span in a table cell (the Run table's judge, a section table's value) is code in
    both renderings: the Markdown table shows it as code, so the HTML one must not print backticks;
    the cell is still escaped."""
    frame = pd.DataFrame({"setting": ["`plain` FM", f"x {XSS}"], "FD": [1.5, 2.5]})
    _, html_path = write_report(tmp_path, title="t", intro="", claims=[],
                                sections=[Section("S", "text", tables=[("table", frame)])],
                                meta={"classifier": "`digits-cnn` (held-out accuracy 98.3%)"})
    page = html_path.read_text(encoding="utf-8")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page)
    assert "<code>digits-cnn</code> (held-out accuracy 98.3%)" in cells
    assert "<code>plain</code> FM" in cells
    assert not [c for c in cells if "`" in c]
    assert XSS not in page and "x &lt;script&gt;" in page


# ----------------------------------------------------------------------------------------------
# the report read back: every claim cell, the verdict counts, tables, escaping, anchors

# what a reader sees for each verdict, written out here rather than read from the module
_MD_LABELS = {"reproduced": "✅ reproduced", "not reproduced": "❌ not reproduced",
              "inconclusive": "➖ inconclusive", "not measured": "⬜ not measured"}
_HTML_LABELS = {"reproduced": "✓ reproduced", "not reproduced": "✗ not reproduced",
                "inconclusive": "– inconclusive", "not measured": "· not measured"}


def _md_row(line: str) -> list[str]:
    """The cells of one Markdown table row, with the \\| and \\\\ escapes undone."""
    assert line.startswith("| ") and line.endswith(" |"), line
    cells, cell, chars = [], "", iter(line[1:-1])
    for char in chars:
        if char == "\\":
            cell += next(chars)
        elif char == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    return cells + [cell.strip()]


def _md_table_after(text: str, heading: str) -> tuple[list[str], list[str], list[list[str]]]:
    """(header, rule, rows) of the first table after the line ``heading``."""
    lines = text.splitlines()
    start = next(i for i in range(lines.index(heading), len(lines)) if lines[i].startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("| ")), len(lines))
    header, rule, *rows = lines[start:end]
    return _md_row(header), _md_row(rule), [_md_row(row) for row in rows]


def _html_rows(table: str) -> list[list[tuple[str, str]]]:
    """(class attribute, unescaped text) of each body cell of one HTML table."""
    body = re.search(r"<tbody>(.*?)</tbody>", table, re.S).group(1)
    return [[(attr.strip(), html.unescape(text)) for attr, text in re.findall(r"<td([^>]*)>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def _mixed_claims() -> list[Claim]:
    verdicts = ["inconclusive", "reproduced", "not reproduced", "reproduced", "inconclusive", "reproduced",
                "not measured"]
    return [Claim(f"study{i}", f"claim {i} with a | pipe, a \\ backslash & <b>", f"paper {i}", f"ours {2 * i}",
                  10 * i + 3, "" if i % 3 == 0 else f"[{i}.1, {i}.9]", verdict, f"note {i}\nsecond line")
            for i, verdict in enumerate(verdicts)]


def test_claims_summary_counts_each_verdict_and_the_table_reads_back_cell_by_cell(tmp_path):
    claims = _mixed_claims()
    counts = Counter(c.verdict for c in claims)
    md, html_path = write_report(tmp_path, title="t", intro="", claims=claims, sections=[], meta={})
    text, page = md.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    summary = (f"7 claims: {counts['reproduced']} reproduced, {counts['not reproduced']} not reproduced, "
               f"{counts['inconclusive']} inconclusive, {counts['not measured']} not measured.")
    assert summary == "7 claims: 3 reproduced, 1 not reproduced, 2 inconclusive, 1 not measured."
    assert summary in text.splitlines() and f'<p class="summary">{summary}</p>' in page

    expected = [[c.study, c.statement, c.paper, c.ours, str(c.n), c.ci or "–", _MD_LABELS[c.verdict],
                 c.note.replace("\n", " ")] for c in claims]
    header, rule, rows = _md_table_after(text, "## Claims")
    assert header == ["study", "claim", "paper", "ours", "n", "CI", "verdict", "note"]
    assert rule == ["---"] * 8 and rows == expected

    table = re.search(r'<table class="claims">.*?</table>', page, re.S).group(0)
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table) == header
    cells = _html_rows(table)
    assert [[text for _, text in row] for row in cells] == [
        row[:6] + [_HTML_LABELS[c.verdict], c.note] for row, c in zip(expected, claims)]
    assert [[attr for attr, _ in row] for row in cells] == [
        ["", "", "", "", 'class="num"', "", f'class="verdict {c.verdict.replace(" ", "-")}"', ""] for c in claims]


def test_section_formats_write_a_tables_numbers_as_its_text_does_in_both_renderings(tmp_path):
    # the support table showed ρ = -0.03094 [-0.09265, 0.03283] and p = 0.001998 under a text and a claim
    # writing -0.031 [-0.093, +0.033] and 0.002 (helper-230)
    frame = pd.DataFrame({"Spearman ρ": [-0.030942, 0.134123], "permutation p": [0.001998, 0.37164],
                          "F_mem": [0, 0.0126393], "n": [1000, 800], "h": [0.48612, 3.2345]})
    formats = {"Spearman ρ": "+.3f", "permutation p": ".3g", "F_mem": ".3f", "not a column": ".1f"}
    sections = [Section("S", tables=[("rho", frame)], formats=formats)]
    md, html_path = write_report(tmp_path, title="t", intro="", claims=[], sections=sections, meta={})
    expected = [["-0.031", "0.002", "0.000", "1000", "0.4861"], ["+0.134", "0.372", "0.013", "800", "3.235"]]
    header, rule, rows = _md_table_after(md.read_text(encoding="utf-8"), "**rho**")
    assert rows == expected and rule == ["---:"] * 5        # signed cells still read as numbers
    table = re.search(r"<table>.*?</table>", html_path.read_text(encoding="utf-8"), re.S).group(0)
    assert [[text for _, text in row] for row in _html_rows(table)] == expected
    assert format_value(float("nan"), "+.3f") == "–" and format_value(None, ".3g") == "–"

    with pytest.raises(ValueError, match=r"section 'S': formats\['n'\] must be a format spec"):
        write_report(tmp_path, title="t", intro="", claims=[], meta={},
                     sections=[Section("S", tables=[("rho", frame)], formats={"n": "d"})])


def test_a_sig_format_writes_significant_digits_without_an_exponent_in_both_renderings(tmp_path):
    # FD columns kept 4 digits (121.9) where the claims wrote 3 (122), and ".3g" writes 1234.5 as 1.23e+03
    frame = pd.DataFrame({"FD": [121.94, 1234.5, 0.0123456, 2.0, np.nan, 5.0e7], "n": [1, 2, 3, 4, 5, 6]})
    sections = [Section("S", tables=[("fd", frame)], formats={"FD": "sig3"})]
    md, html_path = write_report(tmp_path, title="t", intro="", claims=[], sections=sections, meta={})
    expected = ["122", "1230", "0.0123", "2.00", "–", "5e+07"]   # beyond 1e6 a report shows no FD: "g" there
    _, _, rows = _md_table_after(md.read_text(encoding="utf-8"), "**fd**")
    assert [row[0] for row in rows] == expected
    table = re.search(r"<table>.*?</table>", html_path.read_text(encoding="utf-8"), re.S).group(0)
    assert [row[0][1] for row in _html_rows(table)] == expected
    for value, text in zip(frame["FD"][:4], expected):
        assert float(text) == float(f"{value:.3g}")                  # the .3g value, written out
    assert format_value(999.6, "sig3") == "1000" and format_value(-0.0456789, "sig2") == "-0.046"
    for bad in ("sig0", "sig", "sigx", "sig10"):
        with pytest.raises(ValueError, match=r"formats\['FD'\] must be a format spec .* 'sig3'"):
            write_report(tmp_path, title="t", intro="", claims=[], meta={},
                         sections=[Section("S", tables=[("fd", frame)], formats={"FD": bad})])


def test_a_bad_number_format_gets_the_same_message_from_a_section_and_from_a_bar_figure(tmp_path):
    # the check was written twice, with different examples of a good spec in each message
    frame = pd.DataFrame({"setting": ["a", "b"], "F_mem": [0.5, 0.25]})
    messages = []
    for bad in ("d", "sig", "sig10"):
        with pytest.raises(ValueError) as section_error:
            write_report(tmp_path, title="t", intro="", claims=[], meta={},
                         sections=[Section("S", tables=[("f", frame)], formats={"F_mem": bad})])
        with pytest.raises(ValueError) as figure_error:
            F.bar_figure("bad", "c", frame, x="setting", y="F_mem", reference=0.5, reference_format=bad)
        section_text, figure_text = str(section_error.value), str(figure_error.value)
        assert section_text.startswith("section 'S': formats['F_mem'] must be a format spec")
        assert figure_text.startswith("reference_format must be a format spec")
        assert section_text.split(" must be ", 1)[1] == figure_text.split(" must be ", 1)[1]
        messages.append(figure_text)
    assert messages[0].endswith("got 'd'") and "'sig3'" in messages[0]


def test_section_tables_show_the_index_align_numbers_and_read_back_in_both_renderings(tmp_path):
    named = pd.DataFrame({"FD": [1.5, np.nan, 12345.678], "judge": ["a|b", "c\\d", "e"]},
                         index=pd.Index(["FM", "KTS", "EFM"], name="config"))
    unnamed = pd.DataFrame({"F_mem": [0.25, 0.5]}, index=["train", "held out"])
    nested = pd.DataFrame([[1, 2.5]], columns=pd.MultiIndex.from_tuples([("F_mem", "low"), ("F_mem", "high")]))
    sections = [Section("Tables", tables=[("named", named), ("unnamed", unnamed), ("nested", nested),
                                          ("nothing", pd.DataFrame())])]
    md, html_path = write_report(tmp_path, title="t", intro="", claims=[], sections=sections, meta={})
    text, page = md.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")

    header, rule, rows = _md_table_after(text, "**named**")
    assert header == ["config", "FD", "judge"] and rule == ["---", "---:", "---"]  # a missing cell stays numeric
    assert rows == [["FM", "1.5", "a|b"], ["KTS", "–", "c\\d"], ["EFM", "12346", "e"]]
    assert _md_table_after(text, "**unnamed**")[0::2] == (["index", "F_mem"], [["train", "0.25"], ["held out", "0.5"]])
    assert _md_table_after(text, "**nested**")[0::2] == (["F_mem / low", "F_mem / high"], [["1", "2.5"]])
    lines = text.splitlines()
    assert lines[lines.index("**nothing**") + 2] == "(empty table)"

    tables = re.findall(r"<table>.*?</table>", page, re.S)
    assert len(tables) == 3 and "<p><strong>nothing</strong>: (empty table)</p>" in page
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", tables[0]) == ["config", "FD", "judge"]
    assert _html_rows(tables[0]) == [[("", "FM"), ('class="num"', "1.5"), ("", "a|b")],
                                     [("", "KTS"), ('class="num"', "–"), ("", "c\\d")],
                                     [("", "EFM"), ('class="num"', "12346"), ("", "e")]]


def test_user_text_is_escaped_wherever_the_html_shows_it(tmp_path):
    title, heading, column = "KPE <i>study</i> & co", "A<B & C>D", "FD <ref>"
    caption, empty, figure_caption = "table <one> & more", "empty <none>", "ratio < 1/3 & > 0"
    png = F.line_figure("tiny", "c", [0, 1], {"a": [0, 1]}, xlabel="x", ylabel="y").png
    section = Section(heading, "x < y & **y > z**", tables=[(caption, pd.DataFrame({column: [1.0]})),
                                                             (empty, pd.DataFrame())],
                      figures=[Figure("tiny", figure_caption, png)])
    _, html_path = write_report(tmp_path, title=title, intro="", claims=[], sections=[section], meta={})
    page = html_path.read_text(encoding="utf-8")
    for raw in (title, heading, column, caption, empty, figure_caption):
        assert raw not in page and html.escape(raw) in page
    assert f"<title>{html.escape(title)}</title>" in page and f"<h1>{html.escape(title)}</h1>" in page
    assert f">{html.escape(heading)}</a></li>" in page and f"<h2>{html.escape(heading)}</h2>" in page
    assert "<p>x &lt; y &amp; <strong>y &gt; z</strong></p>" in page


def test_markdown_headings_alt_text_and_run_table(tmp_path):
    png = F.line_figure("tiny", "c", [0, 1], {"a": [0, 1]}, xlabel="x", ylabel="y").png
    # a half-open interval leaves a bracket unmatched, which ends the alt text early
    fig = Figure("half_open", "F_mem on [0, 1/3) of the ratios", png)
    md, _ = write_report(tmp_path, title="t", intro="", claims=[], sections=[Section("Memorization", figures=[fig])],
                         meta={"overrides": {}, "studies": ["semantics", np.float64(0.5)], "config": {"steps": 10}})
    lines = md.read_text(encoding="utf-8").splitlines()
    assert "## Memorization" in lines and "## Claims" in lines and "## Run" in lines
    alt = next(line for line in lines if line.startswith("!["))
    assert re.fullmatch(r"!\[[^\[\]]*\]\(figures/half_open\.png\)", alt), alt
    assert "*F_mem on [0, 1/3) of the ratios*" in lines
    assert _md_table_after("\n".join(lines), "## Run")[2] == [["overrides", "{}"], ["studies", '["semantics", 0.5]'],
                                                             ["config.steps", "10"]]


def test_section_anchors_are_unique_and_the_contents_link_each_in_order(tmp_path):
    titles = ["Run", "Claims", "Shaping", "Shaping", "shaping!"]
    _, html_path = write_report(tmp_path, title="t", intro="", claims=[], meta={},
                                sections=[Section(title, "text") for title in titles])
    page = html_path.read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([^"]+)"><h2>([^<]*)</h2>', page)
    assert [heading for _, heading in ids] == ["Claims"] + titles + ["Run"]
    assert len({sid for sid, _ in ids}) == len(ids)
    toc = re.findall(r'<li><a href="#([^"]+)">([^<]*)</a></li>', page)
    assert toc == ids


# ----------------------------------------------------------------------------------------------
# the figures' data read back from their artists, against numpy on the same inputs


def _drawn_data(monkeypatch):
    """Per figure name, each axes' lines, filled bands, patches, error bars, points, images and
    labels as they were when the figure was rendered."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection
    from matplotlib.patches import Polygon, Rectangle

    drawn = {}
    render = F._render

    def keep(fig, name, caption):
        drawn[name] = [{
            "lines": [(line.get_label(), np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float),
                       line.get_linestyle(), line.get_color()) for line in ax.lines],
            "bands": [c.get_paths()[0].vertices for c in ax.collections if isinstance(c, PolyCollection)],
            "bars": [(p.get_x() + p.get_width() / 2, p.get_height()) for p in ax.patches if isinstance(p, Rectangle)],
            "polygons": [p.get_xy() for p in ax.patches if isinstance(p, Polygon)],
            "whiskers": [s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()],
            "points": [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)],
            "images": [np.asarray(im.get_array()) for im in ax.images],
            "texts": [(t.get_position(), t.get_text()) for t in ax.texts],
            "xticks": list(ax.get_xticks()), "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "xrotation": [t.get_rotation() for t in ax.get_xticklabels()],
            "yticks": list(ax.get_yticks()), "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
            "xscale": ax.get_xscale(), "yscale": ax.get_yscale(), "xlim": ax.get_xlim(),
            "title": ax.get_title() or ax.get_title(loc="left"),
            "ylabel": ax.get_ylabel(),
            "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []}
            for ax in fig.axes]
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", keep)
    return drawn


def _band_edges(vertices: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest y of a filled band's outline at each of ``xs``."""
    at = [vertices[np.isclose(vertices[:, 0], x, rtol=0, atol=1e-12), 1] for x in xs]
    assert all(v.size for v in at), "the band does not reach every x"
    return np.array([v.min() for v in at]), np.array([v.max() for v in at])


def _power(times, increments, positive=False):
    """Kinetic power per step, the mean over samples and the 10th/90th percentiles (numpy, float64)."""
    power = np.asarray(increments, float) / np.diff(times)
    power[~np.isfinite(power) | ((power <= 0) if positive else False)] = np.nan
    rows = ~np.all(np.isnan(power), axis=1)
    return (power[rows].mean(axis=0, where=~np.isnan(power[rows])),
            *np.nanpercentile(power, [10, 90], axis=0), int(rows.sum()))


def test_energy_profiles_draw_the_mean_and_the_10_to_90_band_of_each_runs_power(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    rng = np.random.default_rng(3)
    t = np.r_[0.0, np.sort(rng.uniform(0, 1, 7)), 1.0]
    plain = rng.gamma(2.0, 0.5, (12, 8)) * np.diff(t)
    shaped = plain * rng.uniform(0.2, 1.0, (12, 8))
    shaped[3] = np.nan        # a sample with no finite step is not counted
    shaped[5, 2] = np.inf
    shaped[7, 4] = 0.0        # dropped on the log axis only
    mid = (t[:-1] + t[1:]) / 2
    for log in (False, True):
        F.energy_profile_figure(f"p{int(log)}", "c", {"plain FM": (t, plain), "KTS": (t, shaped)}, log_y=log)
        (ax,) = drawn[f"p{int(log)}"]
        assert ax["yscale"] == ("log" if log else "linear") and ax["xlim"] == (0.0, 1.0)
        assert ax["legend"] == ["plain FM (n=12)", "KTS (n=11)"]
        for k, inc in enumerate((plain, shaped)):
            mean, low, high, _ = _power(t, inc, positive=log)
            label, x, y, style, _ = ax["lines"][k]
            np.testing.assert_allclose(x, mid, rtol=1e-12)
            np.testing.assert_allclose(y, mean, rtol=1e-12)
            assert style == ("--" if k == 0 else "-")     # the reference run is dashed
            edges = _band_edges(ax["bands"][k], mid)
            np.testing.assert_allclose(edges, (low, high), rtol=1e-12)
    # three runs and more: the bands are dotted outlines at the 10th and 90th percentiles
    F.energy_profile_figure("crowded", "c", {"a": (t, plain), "b": (t, shaped), "c": (t, 2 * plain)})
    (ax,) = drawn["crowded"]
    dotted = [y for _, _, y, style, _ in ax["lines"] if style == ":"]
    _, low, high, _ = _power(t, 2 * plain)
    assert len(dotted) == 6 and not ax["bands"]
    np.testing.assert_allclose(dotted[4:], [low, high], rtol=1e-12)


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_histograms_are_densities_on_shared_bins_and_count_only_what_they_draw(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    rng = np.random.default_rng(4)
    big = np.r_[rng.lognormal(1.0, 1.0, 900), np.nan, np.inf]
    small = np.r_[rng.lognormal(2.0, 0.5, 20), 0.0, -1.0]      # the zero and -1 cannot sit on a log axis
    for log in (False, True):
        F.histogram_figure(f"h{int(log)}", "c", {"big": big, "small": small, "none": []}, xlabel="KPE", log_x=log)
        (ax,) = drawn[f"h{int(log)}"]
        assert ax["xscale"] == ("log" if log else "linear")
        assert ax["legend"] == ["big (n=900)", f"small (n={20 if log else 22})", "none (no data)"]
        kept = [v[np.isfinite(v) & ((v > 0) if log else True)] for v in (big, small)]
        filled = ax["polygons"][0::2]          # each group: a filled step polygon, then its outline
        assert len(filled) == 2
        edges = [np.unique(p[:, 0]) for p in filled]
        for e in edges:          # one set of bins for both, from the smallest to the largest value drawn
            np.testing.assert_allclose(e, edges[0], rtol=1e-12)
        pooled = np.concatenate(kept)
        np.testing.assert_allclose(edges[0][[0, -1]], [pooled.min(), pooled.max()], rtol=1e-12)
        assert edges[0].size == 31                      # √900 bins: the largest group sets the count
        widths = np.diff(np.log(edges[0]) if log else edges[0])
        np.testing.assert_allclose(widths, widths[0], rtol=1e-9)   # equal steps, in log on a log axis
        for polygon in filled:
            assert _polygon_area(polygon) == pytest.approx(1.0, rel=1e-9)   # a density integrates to 1


def test_scatter_draws_and_counts_the_pairs_each_axis_can_show(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    x = np.array([1.0, 2.0, np.nan, 4.0, -5.0, 6.0])
    y = np.array([0.5, -1.0, 3.0, np.inf, 2.0, 4.0])
    F.scatter_figure("lin", "c", x, y, xlabel="x", ylabel="y", annotation="ρ = 0.5")
    F.scatter_figure("logy", "c", x, y, xlabel="x", ylabel="y", log_y=True)
    lin, logy = drawn["lin"][0], drawn["logy"][0]
    np.testing.assert_array_equal(lin["points"][0], [[1.0, 0.5], [2.0, -1.0], [-5.0, 2.0], [6.0, 4.0]])
    assert lin["title"] == "ρ = 0.5   (n = 4)"
    np.testing.assert_array_equal(logy["points"][0], [[1.0, 0.5], [-5.0, 2.0], [6.0, 4.0]])
    assert logy["title"] == "n = 3"


def test_bar_figure_bars_whiskers_labels_and_group_fences_follow_the_rows(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    grid = pd.DataFrame({"setting": ["plain FM", "launch", "dropped", "landing only (long)", "balanced"],
                         "part": ["main", "main", "main", "grid", "grid"],
                         "F_mem": [0.8234, 0.70, np.nan, 0.65, 0.60], "lo": [0.78, 0.66, 0.1, np.nan, 0.55],
                         "hi": [0.86, 0.75, 0.2, 0.69, np.inf]})
    F.bar_figure("bars", "c", grid, x="setting", y="F_mem", low="lo", high="hi", reference=0.8234,
                 reference_label="plain FM", group="part")
    (ax,) = drawn["bars"]
    assert ax["bars"] == [(0.0, 0.8234), (1.0, 0.70), (2.0, 0.65), (3.0, 0.60)]
    assert ax["xticklabels"] == ["plain FM", "launch", "landing only (long)", "balanced"]
    assert set(ax["xrotation"]) == {35.0}                     # a long label turns them all
    assert ax["legend"] == ["plain FM = 0.8234"]
    # in the units and digits its tables write: F_mem to 3 decimals, an FD to 3 significant digits
    F.bar_figure("fmem", "c", grid, x="setting", y="F_mem", reference=0.82, reference_label="plain FM",
                 reference_format=".3f")
    F.bar_figure("fd", "c", grid.assign(F_mem=grid["F_mem"] * 1500), x="setting", y="F_mem", reference=1234.5,
                 reference_label="plain FM", reference_format="sig3")
    assert drawn["fmem"][0]["legend"] == ["plain FM = 0.820"] and drawn["fd"][0]["legend"] == ["plain FM = 1230"]
    with pytest.raises(ValueError, match="reference_format must be a format spec .* got 'sig'"):
        F.bar_figure("bad", "c", grid, x="setting", y="F_mem", reference=0.8, reference_format="sig")
    # a whisker spans [lo, hi] at its bar; a missing bound draws nothing on that side
    spans = sorted((float(s[0, 0]), *sorted((float(s[0, 1]), float(s[1, 1])))) for s in ax["whiskers"])
    np.testing.assert_allclose(spans, [(0.0, 0.78, 0.86), (1.0, 0.66, 0.75), (2.0, 0.65, 0.69), (3.0, 0.55, 0.60)])
    fences = [x[0] for label, x, _, style, _ in ax["lines"] if style == ":"]
    assert fences == [1.5]                                     # between "launch" and "landing only"
    assert [(pos[0], text) for pos, text in ax["texts"]] == [(0.5, "main"), (2.5, "grid")]


def test_bar_figure_whiskers_span_an_interval_wholly_below_or_above_the_value(monkeypatch):
    # a bias-corrected FD interval can lie wholly below the plain estimate; drawn as an error bar
    # about the value, its whisker reached up to the bar ([0.3, 1.9] for the interval [0.3, 0.6])
    drawn = _drawn_data(monkeypatch)
    grid = pd.DataFrame({"q": ["Q1", "Q2"], "FD": [1.9, 1.0], "lo": [0.3, 1.2], "hi": [0.6, 1.5]})
    for points in (False, True):
        F.bar_figure(f"fd{int(points)}", "c", grid, x="q", y="FD", low="lo", high="hi", points=points)
        (ax,) = drawn[f"fd{int(points)}"]
        spans = sorted((float(s[0, 0]), *sorted((float(s[0, 1]), float(s[1, 1])))) for s in ax["whiskers"])
        np.testing.assert_allclose(spans, [(0.0, 0.3, 0.6), (1.0, 1.2, 1.5)])


def test_bar_figure_marks_the_estimate_its_whiskers_are_about_and_none_where_it_is_missing(monkeypatch):
    # the FD bars were the plain FD with whiskers about the bias-corrected one: a point and an interval that
    # did not belong together. With center, the interval's own estimate is marked on it, the value pale beside
    drawn = _drawn_data(monkeypatch)
    grid = pd.DataFrame({"q": ["Q1", "Q2", "Q3"], "FD": [1.9, 1.0, 2.0], "fixed": [0.45, 1.3, np.nan],
                         "lo": [0.3, 1.2, np.nan], "hi": [0.6, 1.5, np.nan]})
    F.bar_figure("fd", "c", grid, x="q", y="FD", low="lo", high="hi", center="fixed", value_label="plain",
                 center_label="corrected, its interval")
    (ax,) = drawn["fd"]
    (marks,) = [y for label, _, y, _, _ in ax["lines"] if label == "corrected, its interval"]
    np.testing.assert_array_equal(marks, [0.45, 1.3, np.nan])
    assert [h for _, h in ax["bars"]] == [1.9, 1.0, 2.0]
    spans = sorted((float(s[0, 0]), *sorted((float(s[0, 1]), float(s[1, 1])))) for s in ax["whiskers"])
    np.testing.assert_allclose(spans, [(0.0, 0.3, 0.6), (1.0, 1.2, 1.5)])      # none for Q3: no interval
    assert ax["legend"] == ["corrected, its interval", "plain"]
    F.bar_figure("none", "c", grid.assign(fixed=np.nan, lo=np.nan, hi=np.nan), x="q", y="FD", low="lo", high="hi",
                 center="fixed", value_label="plain", center_label="corrected", points=True)
    (ax,) = drawn["none"]
    assert ax["whiskers"] == [] and ax["legend"] == ["plain"]        # no diamond drawn, none named


def test_line_figure_sorts_each_line_by_x_and_keeps_its_band_and_axes_paired(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    x = np.array([300.0, 10.0, 100.0, 30.0, np.nan])
    ys = {"EFM": [0.1, 1.0, np.nan, 0.8, 0.5], "model": [0.2, 0.7, 0.3, 0.0, 0.4]}
    bands = {"EFM": ([0.05, 0.9, 0.2, 0.7, 0.4], [0.2, 1.0, 0.6, 0.9, 0.6])}
    F.line_figure("lines", "c", x, ys, xlabel="N", ylabel="F_mem", log_x=True, log_y=True, bands=bands)
    (left,) = drawn["lines"]
    assert (left["xscale"], left["yscale"]) == ("log", "log")
    efm, model = left["lines"]
    assert [efm[0], model[0]] == ["EFM", "model"]
    np.testing.assert_array_equal(np.c_[efm[1], efm[2]], [[10, 1.0], [30, 0.8], [300, 0.1]])
    np.testing.assert_array_equal(np.c_[model[1], model[2]], [[10, 0.7], [100, 0.3], [300, 0.2]])  # 0: not on log
    assert efm[4] != model[4]
    (band,) = left["bands"]
    assert set(np.unique(band[:, 0])) == {10.0, 30.0, 300.0}    # only where the line itself is drawn
    np.testing.assert_allclose(_band_edges(band, [10.0, 30.0, 300.0]), [[0.9, 0.7, 0.05], [1.0, 0.9, 0.2]])
    # each axis drops only what it cannot show: a log x keeps a zero or negative y
    F.line_figure("logx", "c", [1.0, 2.0, 3.0], {"a": [0.0, 1.0, -2.0]}, xlabel="x", ylabel="y", log_x=True)
    F.line_figure("logy", "c", [-1.0, 2.0, 3.0], {"a": [0.0, 1.0, 20.0]}, xlabel="x", ylabel="y", log_y=True)
    ((_, x, y, _, _),) = drawn["logx"][0]["lines"]
    np.testing.assert_array_equal(np.c_[x, y], [[1.0, 0.0], [2.0, 1.0], [3.0, -2.0]])
    ((_, x, y, _, _),) = drawn["logy"][0]["lines"]
    np.testing.assert_array_equal(np.c_[x, y], [[2.0, 1.0], [3.0, 20.0]])


def _hand_audit(ratio, nearest):
    """A memorization report with the given gap ratios (threshold 1/3, no interval)."""
    import torch

    from kinetic_fm.metrics.memorization import MemorizationReport

    ratio = torch.tensor(ratio, dtype=torch.float64)
    memorized = ratio < 1 / 3
    return MemorizationReport(d1=ratio, d2=torch.ones_like(ratio), ratio=ratio, nearest=torch.tensor(nearest),
                              memorized=memorized, fraction=float(memorized.double().mean()),
                              ci=(float("nan"), float("nan")), threshold=1 / 3, bootstrap=0)


def test_memorization_figure_counts_as_the_audit_and_pairs_each_sample_with_its_nearest(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    rng = np.random.default_rng(6)
    train = rng.uniform(-1, 1, (6, 1, 3, 4))
    train[0, 0, 0, :2] = -1.0, 1.0                       # the training range is [-1, 1]: pixels shown as they are
    samples = rng.uniform(-0.9, 0.9, (6, 1, 3, 4))
    report = _hand_audit([0.6, 1 / 3, 0.05, 0.2, 0.9, 0.01], [3, 0, 5, 1, 2, 4])   # 1/3 itself is not memorized
    F.memorization_figure("mem", "c", report, samples, train, pairs=3)
    hist, pairs = drawn["mem"]
    assert hist["title"] == "F_mem = 0.500"
    assert hist["legend"] == ["not memorized: 3/6", "memorized: 3/6", "threshold d1/d2 = 1/3"]
    order = [5, 2, 3]                                        # the three smallest ratios, smallest first
    # each column: its ratio, the sample's row and its nearest item's row (the table's "sample", "nearest")
    assert pairs["xticklabels"] == ["0.01\nsample 5\nnearest 4", "0.05\nsample 2\nnearest 5",
                                    "0.20\nsample 3\nnearest 1"]
    assert pairs["yticks"][0] < pairs["yticks"][1] and pairs["yticklabels"] == ["sample", "nearest\ntraining"]
    F.memorization_figure("mem", "c", report, samples, train, pairs=2, seeds=np.arange(100, 106))   # a run's
    assert drawn["mem"][1]["xticklabels"] == ["0.01\nsample 5\nseed 105\nnearest 4",
                                              "0.05\nsample 2\nseed 102\nnearest 5"]
    (mosaic,) = pairs["images"]
    for q, i in enumerate(order):                            # top row: the sample; below it: its nearest item
        cell = np.s_[1 + q * 5:1 + q * 5 + 4]
        np.testing.assert_allclose(mosaic[1:4, cell], (samples[i, 0] + 1) / 2)
        np.testing.assert_allclose(mosaic[5:8, cell], (train[report.nearest[i].item(), 0] + 1) / 2)


def test_sample_grid_titles_count_the_samples_drawn_and_place_one_d_points_on_a_line(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    images = np.zeros((5, 1, 4, 4))
    images[2, 0, 1, 1] = np.nan                              # one bad pixel drops the whole image
    points = np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 0.5]])
    line = np.array([[3.0], [1.0], [np.inf]])
    F.sample_grid_figure("grid", "c", {"images": images, "points": points, "line": line})
    imgs, pts, ln = drawn["grid"]
    assert [imgs["title"], pts["title"], ln["title"]] == ["images  (n=4)", "points  (n=2)", "line  (n=2)"]
    np.testing.assert_array_equal(pts["points"][0], [[0.0, 1.0], [2.0, 0.5]])
    np.testing.assert_array_equal(ln["points"][0], [[3.0, 0.0], [1.0, 0.0]])


def test_sample_run_figure_goes_log_only_from_two_decades(monkeypatch):
    drawn = _drawn_data(monkeypatch)
    F.sample_run_figure("thirty", "c", [1.0, 5.0, 30.0])
    F.sample_run_figure("hundred", "c", [1.0, 5.0, 100.0])
    assert drawn["thirty"][0]["xscale"] == "linear" and drawn["hundred"][0]["xscale"] == "log"


def test_a_per_sample_grid_that_does_not_start_at_zero_is_left_out():
    from kinetic_fm.studies.figures import _on_shared_grid

    times = np.array([[0.0, 0.5, 1.0], [0.25, 0.5, 1.0]])
    grid, shared = _on_shared_grid(times, np.ones((2, 2)), 2)
    np.testing.assert_allclose(shared[0], [1.0, 1.0])
    assert np.isnan(shared[1]).all()


def test_a_section_defines_the_terms_it_points_to_unless_the_intro_terms_do(tmp_path):
    # a caption says "see FD interval in Terms"; rendered without kfm reproduce's intro there was no Terms
    # paragraph to see: the section now writes the definitions its captions point to, once, and only there
    png = F.line_figure("fd", "c", [0, 1], {"a": [0, 1]}, xlabel="x", ylabel="y").png
    section = Section("Shaping", text="Setting by setting.",
                      terms={"FD interval": "a jackknife interval", "T": "a gap"},
                      figures=[Figure("fd", "whiskers: see FD interval in Terms", png)])
    md, html_path = write_report(tmp_path / "alone", title="t", intro="", claims=[], sections=[section], meta={})
    text, page = md.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    own = "**Terms.** FD interval: a jackknife interval. T: a gap."
    assert text.index("## Shaping") < text.index("Setting by setting.") < text.index(own) < text.index("![")
    assert "<p><strong>Terms.</strong> FD interval: a jackknife interval. T: a gap.</p>" in page
    # under a report's Terms paragraph that defines FD interval, only the term it leaves out is written
    intro = "Reproduces the paper.\n\n**Terms.** KPE: the energy. FD interval (a whisker): a jackknife interval."
    md, html_path = write_report(tmp_path / "report", title="t", intro=intro, claims=[], sections=[section], meta={})
    text, page = md.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert text.count("a jackknife interval") == page.count("a jackknife interval") == 1
    assert text.count("**Terms.**") == 2 and "**Terms.** T: a gap." in text
    # a term named in another paragraph of the intro is not defined by it
    md, _ = write_report(tmp_path / "other", title="t", intro="See the FD interval below.", claims=[],
                         sections=[section], meta={})
    assert own in md.read_text(encoding="utf-8")


def test_a_claims_long_detail_goes_under_the_table_as_a_numbered_note_the_row_points_to(tmp_path):
    # the Goldilocks row's note cell ran to ~900 characters: the cell keeps the rule, the rest is a note
    detail = "T is the better end quintile's FD minus the best interior one's. " * 8
    claims = [Claim("support", "sparser support", "ρ = -0.65", "ρ = -0.03", 1000, "[-0.09, +0.03]", "inconclusive",
                    "reproduced when the CI lies below 0"),
              Claim("memorization", "Goldilocks", "U shape", "best Q3", 1000, "p = 0.01", "inconclusive",
                    "reproduced when both tests pass", detail)]
    md, html_path = write_report(tmp_path, title="t", intro="", claims=claims, sections=[], meta={})
    text, page = md.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    header, _, rows = _md_table_after(text, "## Claims")
    assert rows[0][-1] == "reproduced when the CI lies below 0"                  # no detail, no pointer
    assert rows[1][-1] == "reproduced when both tests pass (note 1)"
    assert detail.strip() not in "".join(rows[1])
    notes = text[text.index("**Notes to the claims.**"):text.index("## Run")]
    assert f"1. memorization, “Goldilocks”: {detail.strip()}" in notes.splitlines()
    assert text.index("| Goldilocks |") < text.index("**Notes to the claims.**")
    assert f'<li id="note-1">memorization, “Goldilocks”: {html.escape(detail.strip())}</li>' in page
    assert "reproduced when both tests pass (note 1)</td>" in page


def test_a_figure_caption_is_shown_once_and_its_alt_text_is_its_first_sentence(tmp_path):
    png = F.line_figure("tiny", "c", [0, 1], {"a": [0, 1]}, xlabel="x", ylabel="y").png
    caption = ("FD by quintile of KPE [lower is better]. Whiskers: each quintile's own 95% interval. "
               "The claims table's test judges the shape.")
    md, html_path = write_report(tmp_path, title="t", intro="", claims=[], meta={},
                                 sections=[Section("Goldilocks", figures=[Figure("bars", caption, png)])])
    text, page = md.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert text.count(caption) == 1 and f"*{caption}*" in text.splitlines()
    assert "![FD by quintile of KPE (lower is better).](figures/bars.png)" in text.splitlines()
    assert 'alt="FD by quintile of KPE (lower is better)."' in page and page.count("Whiskers: each") == 1
