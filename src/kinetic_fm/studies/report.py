"""The reproduction report: one claims table, sections of text, tables and figures, run metadata.

``write_report`` renders the same content twice, as ``report.md`` (for a repository or a
terminal) and as a self-contained ``report.html`` (inline CSS, figures as base64 data URIs, no
script, no network), and writes every figure as ``figures/<name>.png`` beside them.

Studies build the content; this module only renders it. Numbers in tables are shown to four
significant digits, integers as they are, missing values (NaN, None) as an en dash; a section's
``formats`` give a column the digits its text writes the same quantity with (ρ as +0.031, not -0.03094).
"""
from __future__ import annotations

import base64
import html
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..checks import check_integer
from ..runs.atomic import atomic_write_bytes
from .verdicts import fmt_significant

if TYPE_CHECKING:  # pandas is only needed by callers that build tables
    import pandas as pd

__all__ = ["Claim", "Figure", "Section", "VERDICTS", "format_value", "write_report"]

#: verdict -> the label shown in the report (a symbol so it reads at a glance, plus the word)
VERDICTS = {
    "reproduced": "✅ reproduced",
    "not reproduced": "❌ not reproduced",
    "inconclusive": "➖ inconclusive",
    "not measured": "⬜ not measured",  # the data cannot measure it (no labels): no interval at all
}
#: how a glossary paragraph opens, the report's (``kfm reproduce``'s intro) or a section's own
TERMS_HEAD = "**Terms.**"
# the HTML page colours the verdict cell, so it uses text symbols that every font has
# (colour emoji fonts are often missing on Linux and render as empty boxes)
_HTML_VERDICTS = {"reproduced": "✓ reproduced", "not reproduced": "✗ not reproduced",
                  "inconclusive": "– inconclusive", "not measured": "· not measured"}
_MISSING = "–"
_FIGURE_NAME = re.compile(r"[a-z0-9_-]+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_figure_name(name: str) -> str:
    """Return ``name`` if it is a valid figure file stem ([a-z0-9_-]+), else raise ValueError."""
    if not isinstance(name, str) or not _FIGURE_NAME.fullmatch(name):
        raise ValueError(f"figure name must match [a-z0-9_-]+ (it becomes figures/<name>.png), "
                         f"got {name!r}")
    return name


@dataclass(frozen=True)
class Claim:
    """One claim of the paper set against our measurement.

    Attributes:
        study: the study it belongs to, e.g. ``"semantics"``.
        statement: the claim in words, e.g. ``"Higher-KPE samples have stronger semantics"``.
        paper: the paper's figure, e.g. ``"CLIP margin 5.7 → 8.9 (ImageNet-256)"``.
        ours: our figure, e.g. ``"margin 3.1 → 4.6; Spearman ρ = 0.31"``.
        n: sample size behind ``ours``.
        ci: the confidence interval in words, or ``""`` when there is none.
        verdict: ``"reproduced"``, ``"not reproduced"``, ``"inconclusive"`` or ``"not measured"``
            (the data cannot measure the claim, e.g. semantics without labels).
        note: the rule and what decided it, in one sentence (the table's cell: kept short).
        detail: the rest, if any (how the intervals were made, what the test found, caveats): shown under
            the claims table as a numbered note, which the row's note cell points to.
    """

    study: str
    statement: str
    paper: str
    ours: str
    n: int
    ci: str
    verdict: str
    note: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Claim.verdict must be one of {sorted(VERDICTS)}, got {self.verdict!r}")
        object.__setattr__(self, "n", check_integer("Claim.n", self.n, 0))  # stored as an int


@dataclass(frozen=True)
class Figure:
    """A rendered figure: file stem ``name`` ([a-z0-9_-]+), its caption and its PNG bytes."""

    name: str
    caption: str
    png: bytes

    def __post_init__(self) -> None:
        check_figure_name(self.name)
        if not isinstance(self.png, (bytes, bytearray)) or not bytes(self.png).startswith(_PNG_SIGNATURE):
            raise ValueError(f"Figure.png of {self.name!r} must be PNG bytes")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG to ``path`` (atomically; the folder is created); returns the path."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"path must end in .png (the figure is a PNG), got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(path, bytes(self.png))

    def _repr_png_(self) -> bytes:
        """Jupyter and IPython show the figure inline."""
        return bytes(self.png)


@dataclass
class Section:
    """A report section: Markdown ``text`` (paragraphs, `code`, **bold**, "- " lists),
    ``tables`` as (caption, DataFrame) pairs, then ``figures``.

    ``formats``: column name -> a format spec (``"+.3f"``, ``".3g"``, or ``"sig3"``: three
    significant digits without an exponent, :func:`~kinetic_fm.studies.verdicts.fmt_significant`)
    for the numbers of that column in any of the section's tables, so a table writes a value as
    the section's text and claims do (ρ = -0.031 there, not -0.03094 in the table); other columns
    get :func:`format_value`'s four significant digits.

    ``terms``: term -> its definition, for the terms the section's text or captions send the reader to
    ("see FD interval in Terms"). :func:`write_report` writes them as a **Terms.** paragraph of the
    section, after its text, unless the report's ``intro`` has a **Terms.** paragraph that names them
    (a section rendered alone, outside ``kfm reproduce``, still defines what it points to)."""

    title: str
    text: str = ""
    tables: list[tuple[str, "pd.DataFrame"]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    terms: dict[str, str] = field(default_factory=dict)


def _terms_paragraph(intro: str, section: Section) -> str:
    """The **Terms.** paragraph ``section`` needs under ``intro``: its terms that no **Terms.**
    paragraph of the intro names, each with its definition; empty when there are none."""
    glossary = " ".join(p for p in re.split(r"\n\s*\n", intro) if p.strip().startswith(TERMS_HEAD))
    missing = [f"{term}: {meaning.strip().rstrip('.')}." for term, meaning in section.terms.items()
               if not re.search(rf"(?<!\w){re.escape(term)}(?!\w)", glossary)]
    return " ".join([TERMS_HEAD, *missing]) if missing else ""


# ----------------------------------------------------------------------------------------------
# values and tables


def format_value(value: Any, spec: str | None = None) -> str:
    """Format one table cell: floats to 4 significant digits, integers as they are, NaN/None as "–".
    ``spec`` (a format spec such as ``"+.3f"``, or ``"sigN"``: N significant digits without an
    exponent from 1e-3 to 1e6) formats a finite real number instead (integers too: a column of
    fractions may hold an exact 0)."""
    if value is None:
        return _MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if spec is not None and isinstance(value, numbers.Real) and math.isfinite(float(value)):
        digits = _significant_spec(spec)
        return format(float(value), spec) if digits is None else fmt_significant(float(value), digits)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return _MISSING
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e6:
            # four significant digits without an exponent; keep integral values looking integral
            digits = max(0, 3 - math.floor(math.log10(abs(v))))
            text = f"{round(v, digits):.{digits}f}"
            return text.rstrip("0").rstrip(".") if "." in text else text
        return f"{v:.4g}"
    if isinstance(value, numbers.Complex):
        return f"{complex(value):.4g}"
    try:  # pandas.NA, NaT and friends
        import pandas as pd

        if pd.isna(value):
            return _MISSING
    except (ImportError, TypeError, ValueError):
        pass
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def check_number_format(spec: str, name: str) -> str:
    """Return ``spec`` if :func:`format_value` can write a number with it, else raise ValueError
    naming ``name`` (the argument or setting that holds ``spec``)."""
    try:
        format_value(1.0, spec)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a format spec for a number such as '+.3f', '.3g' or 'sig3', "
                         f"got {spec!r}") from None
    return spec


_SIGNIFICANT_SPEC = re.compile(r"sig([1-9])")


def _significant_spec(spec: str) -> int | None:
    """The N of a ``"sigN"`` spec (N significant digits, :func:`format_value`), else None."""
    match = _SIGNIFICANT_SPEC.fullmatch(spec)
    return None if match is None else int(match.group(1))


def _frame_rows(frame: "pd.DataFrame", formats: dict[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cell strings of ``frame``; a meaningful index becomes leading columns.
    ``formats``: header -> format spec of that column's numbers (:class:`Section`)."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"section tables must be pandas DataFrames, got {type(frame).__name__}")
    if not isinstance(frame.index, pd.RangeIndex) or any(n is not None for n in frame.index.names):
        frame = frame.reset_index()
    header = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    specs = [(formats or {}).get(h) for h in header]
    rows = [[format_value(v, spec) for v, spec in zip(row, specs)] for row in frame.itertuples(index=False, name=None)]
    return header, rows


def _flatten_meta(meta: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten_meta(value, prefix=f"{name}."))
        else:
            items.append((name, format_value(value)))
    return items


def _numeric_columns(rows: list[list[str]], width: int) -> list[bool]:
    """Columns whose every non-missing cell reads as a number (right-aligned)."""
    numeric = [True] * width
    for row in rows:
        for j, cell in enumerate(row):
            if cell == _MISSING or not numeric[j]:
                continue
            try:
                float(cell.replace("∞", "inf").replace("−", "-"))
            except ValueError:
                numeric[j] = False
    return [n and bool(rows) for n in numeric]


# ----------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    numeric = numeric or [False] * len(header)
    rule = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_CLAIM_HEADER = ["study", "claim", "paper", "ours", "n", "CI", "verdict", "note"]


def _claim_cells(claim: Claim, number: int | None, labels: dict[str, str] = VERDICTS) -> list[str]:
    """The row's cells; ``number``: its note's number under the table (None: no note), which the note cell
    ends with."""
    pointer = "" if number is None else f"{' ' if claim.note else ''}(note {number})"
    return [claim.study, claim.statement, claim.paper, claim.ours, str(int(claim.n)),
            claim.ci or _MISSING, labels[claim.verdict], (claim.note or "") + pointer]


def _claim_notes(claims: Sequence[Claim]) -> tuple[list[int | None], list[tuple[int, Claim]]]:
    """Each claim's note number (None for one without ``detail``) and the numbered notes, in table order."""
    numbers: list[int | None] = []
    notes: list[tuple[int, Claim]] = []
    for claim in claims:
        if claim.detail.strip():
            notes.append((len(notes) + 1, claim))
            numbers.append(len(notes))
        else:
            numbers.append(None)
    return numbers, notes


def _note_heading(claim: Claim) -> str:
    return f"{claim.study}, “{claim.statement}”"


def _note_text(claim: Claim) -> str:
    """A claim's ``detail`` on one line, ending as a sentence does."""
    text = " ".join(claim.detail.split())
    return text if text.endswith((".", "!", "?")) else f"{text}."


def figure_alt_text(caption: str, limit: int = 60) -> str:
    """A figure's short alt text: the caption's first sentence, cut at a word within ``limit`` characters
    ("…" marks the cut), brackets made parentheses (a Markdown alt text ends at an unmatched "]"). The
    caption itself is shown once, under the figure."""
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", caption.strip().replace("\n", " "), maxsplit=1)[0]
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return first.replace("[", "(").replace("]", ")")


def _verdict_summary(claims: Sequence[Claim]) -> str:
    """The summary line, e.g. "12 claims: 3 reproduced, 2 not reproduced, 7 inconclusive" ("1 claim: ..."
    for one; "not measured" only when some are)."""
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v] or v != "not measured")
    return f"{len(claims)} claim{'' if len(claims) == 1 else 's'}: {tally}"


def _render_markdown(title: str, intro: str, claims: Sequence[Claim], sections: Sequence[Section],
                     meta: dict[str, Any]) -> str:
    out = [f"# {title}", ""]
    if intro.strip():
        out += [intro.strip(), ""]
    out += ["## Claims", ""]
    if claims:
        numbers, notes = _claim_notes(claims)
        out += [f"{_verdict_summary(claims)}.", ""]
        out += [_md_table(_CLAIM_HEADER, [_claim_cells(c, k) for c, k in zip(claims, numbers)]), ""]
        if notes:
            out += ["**Notes to the claims.**", ""]
            out += [f"{k}. {_note_heading(c)}: {_note_text(c)}" for k, c in notes] + [""]
    else:
        out += ["No claims were evaluated.", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        if section.text.strip():
            out += [section.text.strip(), ""]
        if terms := _terms_paragraph(intro, section):
            out += [terms, ""]
        for caption, frame in section.tables:
            header, rows = _frame_rows(frame, section.formats)
            if caption:
                out += [f"**{_md_cell(caption)}**", ""]
            out += [_md_table(header, rows, _numeric_columns(rows, len(header))) if header else "(empty table)", ""]
        for fig in section.figures:
            out += [f"![{figure_alt_text(fig.caption)}](figures/{fig.name}.png)", "", f"*{fig.caption.strip()}*", ""]
    out += ["## Run", ""]
    items = _flatten_meta(meta)
    out += [_md_table(["key", "value"], items) if items else "No run metadata.", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# HTML


_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _inline_html(text: str) -> str:
    """Escape ``text`` and render `code` spans and **bold** (code spans are left verbatim)."""
    parts = _CODE_SPAN.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            out.append(_BOLD.sub(r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def markdown_to_html(text: str) -> str:
    """A tiny Markdown subset: blank-line separated paragraphs, "- " bullet lists, `code`, **bold**."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    out = []
    for block in blocks:
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        if all(ln.startswith(("- ", "* ")) for ln in lines):
            items = "".join(f"<li>{_inline_html(ln[2:].strip())}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline_html(' '.join(lines))}</p>")
    return "\n".join(out)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[bool] | None = None,
                caption: str = "", cell_class=None, table_class: str = "") -> str:
    numeric = numeric or [False] * len(header)
    head = "".join(('<th class="num">' if n else "<th>") + f"{html.escape(h)}</th>"
                   for h, n in zip(header, numeric))
    body = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            classes = (["num"] if numeric[j] else []) + ([cell_class(j, cell)] if cell_class else [])
            classes = [c for c in classes if c]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{_inline_html(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    table = f'<table class="{table_class}">' if table_class else "<table>"
    return (f'<div class="table-wrap">{table}{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --zebra:#f6f8fa; --accent:#0969da;
        --ok-bg:#dafbe1; --ok-fg:#116329; --bad-bg:#ffebe9; --bad-fg:#a40e26; --na-bg:#eaeef2; --na-fg:#424a53; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.55 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.9em; margin: 0.2em 0 0.4em; border-bottom: 1px solid var(--line); padding-bottom: 0.3em; }
h2 { font-size: 1.4em; margin: 1.8em 0 0.6em; border-bottom: 1px solid var(--line); padding-bottom: 0.25em; }
p, ul { margin: 0.5em 0 0.9em; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
code { font: 0.88em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: var(--zebra); padding: 0.1em 0.35em; border-radius: 4px; }
nav.toc { background: var(--zebra); border: 1px solid var(--line); border-radius: 6px;
          padding: 10px 18px; margin: 1em 0 1.5em; display: inline-block; min-width: 260px; }
nav.toc strong { display: block; margin-bottom: 0.2em; }
nav.toc ol { margin: 0; padding-left: 1.3em; }
.summary { color: var(--muted); }
.table-wrap { overflow-x: auto; margin: 0.6em 0 1.4em; }
table { border-collapse: collapse; min-width: 40%; font-size: 0.92em; }
table.claims { width: 100%; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 0.4em; }
th, td { border: 1px solid var(--line); padding: 5px 9px; vertical-align: top; text-align: left; }
th { background: #eef1f4; font-weight: 600; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.verdict { font-weight: 600; white-space: nowrap; }
td.reproduced { background: var(--ok-bg); color: var(--ok-fg); }
td.not-reproduced { background: var(--bad-bg); color: var(--bad-fg); }
td.inconclusive { background: var(--na-bg); color: var(--na-fg); }
td.not-measured { color: var(--muted); }
figure { margin: 1em 0 1.8em; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.92em; margin-top: 0.4em; text-align: left;
             max-width: 900px; margin-left: auto; margin-right: auto; }
table.meta td:first-child { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: nowrap; }
/* On paper a wide table cannot scroll: its wrapper would clip the right-hand columns. Smaller
   type, tighter cells and wrapping allowed in every cell (numbers too; a word longer than its
   column breaks) let the table fit the page's width. */
@media print {
  body { font-size: 11px; }
  main { max-width: none; padding: 0; }
  .table-wrap { overflow: visible; }
  table { font-size: 0.85em; max-width: 100%; }
  th, td { padding: 2px 4px; overflow-wrap: break-word; }
  td.num, th.num, td.verdict, table.meta td:first-child { white-space: normal; }
  tr, figure { break-inside: avoid; }
  th, td.reproduced, td.not-reproduced, td.inconclusive {
    print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""


def _slug(title: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return slug


def _render_html(title: str, intro: str, claims: Sequence[Claim], sections: Sequence[Section],
                 meta: dict[str, Any]) -> str:
    used: set[str] = {"claims", "run"}
    ids = [_slug(s.title, used) for s in sections]
    toc = ['<li><a href="#claims">Claims</a></li>']
    toc += [f'<li><a href="#{i}">{html.escape(s.title)}</a></li>' for i, s in zip(ids, sections)]
    toc += ['<li><a href="#run">Run</a></li>']
    body = [f"<h1>{html.escape(title)}</h1>"]
    if intro.strip():
        body.append(markdown_to_html(intro))
    body.append(f'<nav class="toc"><strong>Contents</strong><ol>{"".join(toc)}</ol></nav>')

    body.append('<section id="claims"><h2>Claims</h2>')
    if claims:
        body.append(f'<p class="summary">{html.escape(_verdict_summary(claims))}.</p>')
        verdict_col = _CLAIM_HEADER.index("verdict")
        by_label = {label: key for key, label in _HTML_VERDICTS.items()}

        def verdict_class(j: int, cell: str) -> str:
            if j != verdict_col:
                return ""
            return "verdict " + by_label[cell].replace(" ", "-")

        numeric = [h == "n" for h in _CLAIM_HEADER]
        numbers, notes = _claim_notes(claims)
        body.append(_html_table(_CLAIM_HEADER, [_claim_cells(c, k, _HTML_VERDICTS) for c, k in zip(claims, numbers)],
                                numeric=numeric, cell_class=verdict_class, table_class="claims"))
        if notes:
            items = "".join(f'<li id="note-{k}">{_inline_html(f"{_note_heading(c)}: {_note_text(c)}")}</li>'
                            for k, c in notes)
            body.append(f'<p><strong>Notes to the claims.</strong></p><ol class="notes">{items}</ol>')
    else:
        body.append("<p>No claims were evaluated.</p>")
    body.append("</section>")

    for sid, section in zip(ids, sections):
        body.append(f'<section id="{sid}"><h2>{html.escape(section.title)}</h2>')
        if section.text.strip():
            body.append(markdown_to_html(section.text))
        if terms := _terms_paragraph(intro, section):
            body.append(markdown_to_html(terms))
        for caption, frame in section.tables:
            header, rows = _frame_rows(frame, section.formats)
            if not header:
                body.append(f"<p><strong>{html.escape(caption)}</strong>: (empty table)</p>")
                continue
            body.append(_html_table(header, rows, numeric=_numeric_columns(rows, len(header)), caption=caption))
        for fig in section.figures:
            data = base64.b64encode(bytes(fig.png)).decode("ascii")
            alt = html.escape(figure_alt_text(fig.caption))
            body.append(f'<figure id="fig-{fig.name}"><img src="data:image/png;base64,{data}" alt="{alt}">'
                        f"<figcaption>{_inline_html(fig.caption)}</figcaption></figure>")
        body.append("</section>")

    body.append('<section id="run"><h2>Run</h2>')
    items = _flatten_meta(meta)
    body.append(_html_table(["key", "value"], items, table_class="meta") if items else "<p>No run metadata.</p>")
    body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


# ----------------------------------------------------------------------------------------------
# files


def write_report(out_dir: str | os.PathLike[str], *, title: str, intro: str, claims: list[Claim],
                 sections: list[Section], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` and ``out_dir/figures/<name>.png``.

    Args:
        out_dir: folder to write into (created if missing).
        title: report title; ``intro``: Markdown paragraphs under it.
        claims: one row per paper claim for the "Claims" table.
        sections: rendered in order after the claims, each with a table-of-contents entry.
        meta: run metadata (config, versions, timings); nested dicts are flattened to
            dotted keys and shown in the "Run" table.

    Returns:
        ``(markdown_path, html_path)``.

    Raises:
        ValueError: on a claim or figure that is not a ``Claim``/``Figure``, or two figures
            sharing a name (they would overwrite each other's PNG).
    """
    claims = list(claims)
    for claim in claims:
        if not isinstance(claim, Claim):
            raise ValueError(f"claims must be Claim instances, got {type(claim).__name__}")
    seen: set[str] = set()
    for section in sections:
        if not isinstance(section, Section):
            raise ValueError(f"sections must be Section instances, got {type(section).__name__}")
        for fig in section.figures:
            if not isinstance(fig, Figure):
                raise ValueError(f"section {section.title!r}: figures must be Figure instances, "
                                 f"got {type(fig).__name__}")
            if fig.name in seen:
                raise ValueError(f"two figures are named {fig.name!r}; figure names must be unique")
            seen.add(fig.name)
        for column, spec in section.formats.items():
            check_number_format(spec, f"section {section.title!r}: formats[{column!r}]")

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for section in sections:
        for fig in section.figures:
            atomic_write_bytes(out / "figures" / f"{fig.name}.png", bytes(fig.png))
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_bytes(md_path, _render_markdown(title, intro, claims, sections, meta).encode("utf-8"))
    atomic_write_bytes(html_path, _render_html(title, intro, claims, sections, meta).encode("utf-8"))
    return md_path, html_path
