"""The HTML report in a real browser (headless Chromium): it renders, every figure loads, and the
page logs nothing to the console. Slow (two browser launches); skipped when Chromium is absent
(Debian: ``apt-get install chromium``)."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]

# Appended to a copy of the page: after load, record for every image whether it decoded, so the
# result can be read back with --dump-dom. The deliberately broken image and console message
# are controls showing that both checks can fail.
_PROBE = """
<img id="kfm-broken-control" alt="" src="data:image/png;base64,AAAA">
<script>
console.error("kfm-console-control");
window.addEventListener("load", () => {
  const images = [...document.images].map(img => ({id: img.closest("figure") ? img.closest("figure").id : img.id,
                                                 ok: img.complete && img.naturalWidth > 0,
                                                 width: img.naturalWidth}));
  const out = document.createElement("pre");
  out.id = "kfm-probe";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("headless Chromium not found (install Debian's package: apt-get install -y chromium)")


def _build_report(out: Path):
    spec = importlib.util.spec_from_file_location("_kfm_test_report", Path(__file__).with_name("test_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_report(out)


def _run(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([browser, *_FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    browser = _chromium()
    out = tmp_path_factory.mktemp("browser_report")
    _, html_path, figs = _build_report(out)

    shot = out / "screenshot.png"
    page_run = _run(browser, out / "profile-page", "--window-size=1200,3200", "--virtual-time-budget=5000",
                    f"--screenshot={shot}", html_path.as_uri())

    probed = out / "probed.html"
    probed.write_text(html_path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    probe_run = _run(browser, out / "profile-probe", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    return html_path, figs, shot, page_run, probe_run


def test_page_renders_non_blank(rendered):
    from PIL import Image

    _, _, shot, _, _ = rendered
    assert shot.is_file(), "chromium wrote no screenshot"
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] >= 1000 and image.shape[1] >= 1000
    not_white = np.any(image < 245, axis=2).mean()
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert not_white > 0.03, f"screenshot is nearly blank ({not_white:.1%} non-white pixels)"
    assert colours > 100, f"screenshot has only {colours} colours"
    # the verdict cells are coloured: the reproduced green (#dafbe1) appears somewhere
    assert np.any(np.all(np.abs(image.astype(int) - [0xDA, 0xFB, 0xE1]) <= 2, axis=2))


def test_every_figure_loads(rendered):
    _, figs, _, _, probe_run = rendered
    dom = probe_run.stdout
    assert "<title>kinetic_fm reproduction</title>" in dom
    match = re.search(r'<pre id="kfm-probe">(.*?)</pre>', dom, re.S)
    assert match, "the load probe did not run"
    images = json.loads(match.group(1).replace("&quot;", '"'))
    by_id = {img["id"]: img for img in images}
    assert by_id.pop("kfm-broken-control")["ok"] is False  # the check can fail
    assert sorted(by_id) == sorted(f"fig-{f.name}" for f in figs)
    broken = [key for key, img in by_id.items() if not img["ok"]]
    assert not broken, f"figures that did not load: {broken}"


def test_no_console_messages(rendered):
    _, _, _, page_run, probe_run = rendered
    assert any("kfm-console-control" in line for line in _console_lines(probe_run.stderr)), \
        "console capture does not work (the control message was not seen)"
    assert _console_lines(page_run.stderr) == []


# Read back after load: for each table, how wide its scrolling wrapper's content is against the
# wrapper, and where the table ends against the page (CSS px).
_WIDTH_PROBE = """
<script>
window.addEventListener("load", () => {
  const page = document.documentElement.clientWidth;
  const tables = [...document.querySelectorAll(".table-wrap")].map(wrap => ({
    scroll: wrap.scrollWidth, client: wrap.clientWidth, page: page,
    right: wrap.querySelector("table").getBoundingClientRect().right}));
  const out = document.createElement("pre");
  out.id = "kfm-widths";
  out.textContent = JSON.stringify(tables);
  document.body.appendChild(out);
});
</script>
"""

# A printed letter or A4 page leaves 7.5 to 7.7 inches between Chromium's default margins
# (about 717-739 CSS px at 96 per inch): lay the page out a little narrower than that.
_PRINT_WIDTH = 700


def _table_widths(browser: str, profile: Path, page: Path) -> list[dict]:
    run = _run(browser, profile, f"--window-size={_PRINT_WIDTH},2000", "--virtual-time-budget=3000", "--dump-dom",
               page.as_uri())
    match = re.search(r'<pre id="kfm-widths">(.*?)</pre>', run.stdout, re.S)
    assert match, "the width probe did not run"
    return json.loads(match.group(1).replace("&quot;", '"'))


def test_a_printed_report_keeps_every_column_of_a_wide_table(tmp_path):
    """On screen a wide table scrolls inside its wrapper; on paper that wrapper clipped its right-hand
    columns. The page's print rules, applied on screen at a printed page's width, must fit every
    table; the same page without them overflows there (so the check can fail)."""
    import pandas as pd

    from kinetic_fm.studies.report import Section, write_report

    browser = _chromium()
    header = ["setting", "group", "solver", "steps", "grid", "alpha0", "beta0", "tau", "launch", "landing",
              "FD-digits-cnn", "F_mem", "F_mem CI low", "F_mem CI high", "mean KPE", "mean KPE after t = 0.6"]
    row = ["launch exponential", "launch form", "midpoint", 10, "uniform", 0.01, 0.01, 0.6, "exponential",
           "exponential", 105.4, 0.0, 0.0, 0.0741, 12.79, 4.924]   # the tiny run's KTS grid, 16 columns
    frame = pd.DataFrame([row] * 3, columns=header)
    _, html_path = write_report(tmp_path / "report", title="wide", intro="", claims=[], meta={"wall_s": 1.0},
                                sections=[Section("Shaping", "The KTS ablation grid.", tables=[("grid", frame)])])
    page = html_path.read_text(encoding="utf-8")
    views = {}
    for name, text in (("print", page.replace("@media print", "@media all")), ("screen", page)):
        views[name] = tmp_path / f"{name}.html"
        views[name].write_text(text.replace("</body>", _WIDTH_PROBE + "</body>"), encoding="utf-8")
    printed = _table_widths(browser, tmp_path / "profile-print", views["print"])
    screen = _table_widths(browser, tmp_path / "profile-screen", views["screen"])
    assert len(printed) == len(screen) == 2                         # the grid and the Run table
    assert screen[0]["scroll"] > screen[0]["client"] + 50, screen    # control: on screen the grid scrolls
    for table in printed:
        assert table["scroll"] <= table["client"] and table["right"] <= table["page"], printed
