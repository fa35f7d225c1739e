"""Rendering a table: ours beside the paper's, as Markdown, CSV and LaTeX; plots; files.

`render_all` is pure: given a spec and our results per row (a metrics dict, or a `Missing` /
`Failed` / `SameAs` saying why there is none) and the rows' uncertainty, it returns strings
that put ours, the paper's and the difference side by side. A row we cannot compute shows
the paper's numbers and the reason, never a number of ours. `write_table` puts them under
`runs/tables/` and on the table's MLflow parent run (with the Fig. 8 plot of a sensitivity
table); `log_row_artifacts` gives a row's run its predictions, per-query results and plots.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.config.settings import Settings
from harness.config.table import RowSpec, TableError, TableSpec
from harness.core.io import atomic_write_text
from harness.core.results import Failed, Missing, Outcome, Running, SameAs
from harness.eval.top1 import top1_ious
from harness.method.sources import Prepared
from harness.report import plots
from harness.report.tracking import Tracker
from harness.tables.stats import NOT_SIGNIFICANT, Uncertainty

Result = Outcome
NOT_IN_PAPER = "not in paper"
NO_PAPER_NUMBER = "–"  # the paper prints a dash
NOT_REPORTED = "n/a"  # a computed row whose metrics lack this column's key
SUBSTITUTED_MARK = "‡"  # our number was computed under a declared substitution (the paper uses †)


@dataclass(frozen=True)
class _Cells:
    ours: str
    paper: str
    diff: str
    low: str = ""  # the 95 % interval of ours, when the row's per-query results are known
    high: str = ""
    p: str = ""  # paired p-value against the reference row
    ns: bool = False  # not significantly different from the reference row


@dataclass(frozen=True)
class _Line:
    row: RowSpec
    status: str  # ok | missing | failed | not run | peer
    cells: tuple[_Cells, ...]


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _lines(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> list[_Line]:
    unknown = sorted(set(results) - {r.name for r in spec.rows})
    if unknown:
        raise TableError(
            f"table {spec.id}: results for unknown row(s) {', '.join(map(repr, unknown))}; "
            f"rows: {', '.join(r.name for r in spec.rows)}"
        )
    out = []
    for row in spec.rows:
        result = results.get(row.name)
        if isinstance(result, Missing):
            status = "missing"
        elif isinstance(result, Failed):
            status = "failed"
        elif isinstance(result, SameAs):
            status = "same"
        elif isinstance(result, Running):
            status = "running"
        elif result is None:
            status = "not run" if row.runnable else "peer"
        elif isinstance(result, Mapping):
            status = "ok"
        else:
            raise TableError(f"table {spec.id}, row {row.name!r}: result should be a metrics mapping, "
                             "Missing, Failed, SameAs or Running")
        mark = SUBSTITUTED_MARK if row.name in spec.substituted and status in ("ok", "same") else ""
        cells = []
        for col, key in spec.columns.items():
            ours_val: float | None = None
            if status in ("missing", "failed", "same", "running"):
                ours = result.label + mark  # type: ignore[union-attr]
            elif status == "not run":
                ours = "not run"
            elif status == "peer":
                ours = "not run (peer)"
            else:
                v = result.get(key)  # type: ignore[union-attr]
                if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                    ours_val = round(float(v), 2)
                    ours = _fmt(ours_val) + mark
                else:  # absent, None or NaN: the run did not report this metric
                    ours = NOT_REPORTED
            paper_val = row.paper.get(col)
            paper = NOT_IN_PAPER if row.extra else NO_PAPER_NUMBER if paper_val is None else _fmt(paper_val)
            diff = ""
            if ours_val is not None and paper_val is not None:
                d = round(ours_val - paper_val, 2)
                diff = f"{d + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0: no "-0.00"
            stats = unc.cells.get(row.name, {}).get(key) if unc is not None and ours_val is not None else None
            if stats is not None:
                lo, hi, p = stats
                ns = p is not None and p >= 0.05
                cells.append(_Cells(ours, paper, diff, _fmt(lo), _fmt(hi), "" if p is None else f"{p:.3f}", ns))
            else:
                cells.append(_Cells(ours, paper, diff))
        out.append(_Line(row, status, tuple(cells)))
    return out


def _show_dataset_column(spec: TableSpec) -> bool:
    return len({r.paper_dataset for r in spec.rows}) > 1


def _footnotes(spec: TableSpec, unc: Uncertainty | None = None) -> list[str]:
    notes = [unc.note()] if unc is not None else []
    if spec.note:
        notes.append(f"Note: {' '.join(spec.note.split())}")
    inferred = spec.inferred_rows()
    if inferred:
        notes.append("* Inferred row labels: " + "; ".join(f"{r.name} ({r.note})" for r in inferred))
    others = [r for r in spec.rows if r.note and not r.inferred]
    if others:
        notes.append("Row notes: " + "; ".join(f"{r.name}: {r.note}" for r in others))
    return notes


def _header_line(spec: TableSpec) -> str:
    line = (f"Table {spec.id}: {spec.title}. Ours on {', '.join(spec.datasets)}; "
            f"paper on {spec.paper_dataset}.")
    if spec.substituted:
        subs = "; ".join(f"{s} ({why})" for s, why in spec.substitutions)
        line += f" {SUBSTITUTED_MARK} computed with substitutions: {subs}."
    return line


def _with_interval(c: _Cells) -> str:
    if not c.low:
        return c.ours
    return f"{c.ours} [{c.low}, {c.high}]" + (f" {NOT_SIGNIFICANT}" if c.ns else "")


def render_markdown(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> str:
    """A GitHub Markdown table: per column ours | paper | Δ (ours - paper), notes below."""

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    show_ds = _show_dataset_column(spec)
    head = ["Row", *spec.info, *(["Dataset"] if show_ds else [])]
    for col in spec.columns:
        head += [f"{col} ours", f"{col} paper", f"{col} Δ"]
    align = ["---"] * (1 + len(spec.info) + show_ds) + ["---:"] * (3 * len(spec.columns))
    lines = [f"**{esc(_header_line(spec))}**", "", "| " + " | ".join(map(esc, head)) + " |",
             "|" + "|".join(align) + "|"]  # fmt: skip
    for line in _lines(spec, results, unc):
        r = line.row
        cells = [esc(r.name) + (" \\*" if r.inferred else "")]
        cells += [esc(r.info.get(i) or "") for i in spec.info]
        if show_ds:
            cells.append(esc(r.paper_dataset))
        for c in line.cells:
            cells += [esc(_with_interval(c)), esc(c.paper), esc(c.diff)]
        lines.append("| " + " | ".join(cells) + " |")
    foot = _footnotes(spec, unc)
    if foot:
        lines.append("")
        lines += [esc(f).replace("* Inferred", "\\* Inferred", 1) + "  " for f in foot]
    return "\n".join(lines) + "\n"


def render_csv(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> str:
    """One rectangular CSV: a header row, then one row per table row (no comment lines, so
    any CSV reader takes it). Paper "–" cells are empty; our cells hold a number or a reason."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "row", "inferred", "peer", "extra", *spec.info, "paper_dataset", "status"]
    for col in spec.columns:
        head += [f"{col} ours", f"{col} paper", f"{col} diff"]
        if unc is not None:
            head += [f"{col} ci low", f"{col} ci high", f"{col} p vs {unc.reference}"]
    head += ["note", "substituted"]
    w.writerow(head)
    for line in _lines(spec, results, unc):
        r = line.row
        rec = [spec.id, r.name, str(r.inferred).lower(), str(r.peer).lower(), str(r.extra).lower()]
        rec += [r.info.get(i) or "" for i in spec.info]
        rec += [r.paper_dataset, line.status]
        for c in line.cells:
            rec += [c.ours, "" if c.paper == NO_PAPER_NUMBER else c.paper, c.diff]
            if unc is not None:
                rec += [c.low, c.high, c.p]
        rec += [r.note or "", "true" if r.name in spec.substituted else "false"]
        w.writerow(rec)
    return buf.getvalue()


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "✓": r"\checkmark{}", "–": "--", "†": r"\dag{}", "‡": r"\ddag{}", "Δ": r"$\Delta$",
}  # fmt: skip


def _tex(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def render_latex(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> str:
    """A `table` float with a plain `tabular` (no package beyond amssymb for \\checkmark)."""
    show_ds = _show_dataset_column(spec)
    n_left = 1 + len(spec.info) + show_ds
    colspec = "l" * n_left + "|" + "|".join("rrr" for _ in spec.columns)
    top = ["Row", *spec.info, *(["Dataset"] if show_ds else [])]
    first = [_tex(h) for h in top] + [rf"\multicolumn{{3}}{{c}}{{{_tex(c)}}}" for c in spec.columns]
    second = [""] * n_left + ["ours", "paper", r"$\Delta$"] * len(spec.columns)
    out = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{_tex(_header_line(spec))}}}",
        rf"\begin{{tabular}}{{{colspec}}}",
        r"\hline",
        " & ".join(first) + r" \\",
        " & ".join(second) + r" \\",
        r"\hline",
    ]
    for line in _lines(spec, results, unc):
        r = line.row
        cells = [_tex(r.name) + (r"$^{*}$" if r.inferred else "")]
        cells += [_tex(r.info.get(i) or "") for i in spec.info]
        if show_ds:
            cells.append(_tex(r.paper_dataset))
        for c in line.cells:
            ours = _tex(c.ours) if line.status == "ok" else rf"\textit{{{_tex(c.ours)}}}"
            if c.low:
                ours += rf" {{\scriptsize [{c.low}, {c.high}]}}" + (rf"$^{{{NOT_SIGNIFICANT}}}$" if c.ns else "")
            cells += [ours, _tex(c.paper), _tex(c.diff)]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\hline", r"\end{tabular}"]
    foot = _footnotes(spec, unc)
    if foot:
        out.append(r"\par\smallskip\footnotesize")
        out += [_tex(f).replace("* Inferred", r"$^{*}$ Inferred", 1) + r"\par" for f in foot]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def render_all(spec: TableSpec, results: Mapping[str, Result], unc: Uncertainty | None = None) -> dict[str, str]:
    """All three renderings, keyed by file extension ("md", "csv", "tex")."""
    return {
        "md": render_markdown(spec, results, unc),
        "csv": render_csv(spec, results, unc),
        "tex": render_latex(spec, results, unc),
    }


# -- files, plots and artifacts ------------------------------------------------------
def write_table(spec: TableSpec, rendered: Mapping[str, str], settings: Settings, tracker: Tracker,
                parent_id: str, results: Mapping[str, Outcome]) -> None:
    """The renderings under `<out>/tables/` and as artifacts of the parent run (and the
    Markdown's rows as an MLflow table), with the sensitivity plot where there is one."""
    folder = Path(settings.out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "-demo" if settings.demo else ""
    for ext, text in rendered.items():
        atomic_write_text(folder / f"table{spec.id}{suffix}.{ext}", text)
        tracker.log_text(parent_id, text, f"table{spec.id}.{ext}")
    # the same table as an MLflow table artifact: the UI shows it as a table (Artifacts tab)
    tracker.log_table(parent_id, list(csv.DictReader(io.StringIO(rendered["csv"]))), f"table{spec.id}.json")
    plot = sensitivity_plot(spec, results, folder / f"table{spec.id}{suffix}.png")
    if plot is not None:
        tracker.log_file(parent_id, plot, "plots")


def sensitivity_plot(spec: TableSpec, results: Mapping[str, Outcome], path: Path) -> Path | None:
    """Fig. 8 for the sensitivity tables: the one config key their rows vary."""
    rows = [r for r in spec.rows if r.overrides]
    keys = {k for r in rows for k in (r.overrides or {})}
    if len(keys) != 1 or not spec.id.upper().startswith("C"):
        return None
    (param,) = keys
    xs = [float((r.overrides or {})[param]) for r in rows]
    ours = {col: [results[r.name].get(key) if isinstance(results.get(r.name), Mapping) else None  # type: ignore[union-attr]
                  for r in rows]
            for col, key in spec.columns.items()}
    paper = {col: [r.paper.get(col) for r in rows] for col in spec.columns}
    return plots.sensitivity_curve(param, xs, ours, paper, path, f"Table {spec.id}: sensitivity to {param}")


def log_row_artifacts(tracker: Tracker, run_id: str, prep: Prepared, res: dict[str, Any]) -> None:
    """Predictions, per-query top-1 results, the query-type breakdown (Fig. 7) and two
    score curves (Fig. 9) of one row."""
    rows = res["predictions"]
    iou = top1_ious(list(prep.queries), rows)
    types = plots.query_types([q.query for q in prep.queries])
    lines = ["qid,vid,query_type,top1_start,top1_end,top1_iou,r1_0.5,r1_0.7"]
    for q, r, v, kind in zip(prep.queries, rows, iou, types, strict=True):
        w = r["pred_relevant_windows"][:1]
        s, e = (w[0][0], w[0][1]) if w else ("", "")
        lines.append(f"{q.qid},{q.vid},{kind},{s},{e},{v:.4f},{int(v >= 0.5)},{int(v >= 0.7)}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "per_query.csv").write_text("\n".join(lines) + "\n")
        _, stats = plots.query_type_breakdown(types, iou, d / "query_types.png")
        (d / "query_types.json").write_text(json.dumps(stats, indent=2))
        best = int(np.argmax(iou)) if len(iou) else 0
        for k, qi in enumerate(dict.fromkeys([0, best])):
            if qi < len(rows):
                plots.score_curve(prep.queries[qi], rows[qi], d / f"score_curve_{k}_qid{prep.queries[qi].qid}.png")
        for f in sorted(d.iterdir()):
            tracker.log_file(run_id, f, "plots" if f.suffix == ".png" else None)
