"""Figures, targets and the printed table: what was measured, against what, and what it means.

A `Figure` is one measured quantity (a latency with its percentiles, a throughput with the
baseline it was measured beside, a resource count) or, when it could not be measured, the
reason why. A `Target` is a goal from the issues, judged only from a figure of the same run; a
figure that is missing makes its targets missed, never met.
"""

from __future__ import annotations

import json
import math
import operator
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Figure:
    """One measured quantity, or the reason it was not measured."""

    key: str
    label: str
    unit: str
    value: float | None = None  # the headline: p50 for a latency, median of runs for a rate
    p95: float | None = None
    p99: float | None = None
    samples: int | None = None  # requests timed, or runs taken
    baseline: float | None = None  # measured in the same run, same unit
    baseline_label: str | None = None
    runs: list[float] = field(default_factory=list)  # each repeat's value (rates)
    baseline_runs: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # secondary figures worth keeping
    note: str = ""
    missing: str | None = None  # why it was not measured

    @property
    def ratio(self) -> float | None:
        """value / baseline, when both exist."""
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def latency_figure(key: str, label: str, seconds: Sequence[float], *, note: str = "", unit: str = "ms") -> Figure:
    """A latency figure (p50 headline, p95, p99) from samples in seconds."""
    scale = 1000.0 if unit == "ms" else 1e6
    ms = [s * scale for s in seconds]
    return Figure(
        key=key, label=label, unit=unit, value=percentile(ms, 50), p95=percentile(ms, 95), p99=percentile(ms, 99),
        samples=len(ms), note=note,
    )


def rate_figure(
    key: str, label: str, unit: str, runs: Sequence[float], *,
    baseline_runs: Sequence[float] = (), baseline_label: str | None = None, note: str = "",
) -> Figure:
    """A throughput figure: the median of repeated runs, beside its baseline's median."""
    return Figure(
        key=key, label=label, unit=unit, value=statistics.median(runs), samples=len(runs), runs=list(runs),
        baseline=statistics.median(baseline_runs) if baseline_runs else None, baseline_runs=list(baseline_runs),
        baseline_label=baseline_label, note=note,
    )


def not_measured(key: str, label: str, unit: str, reason: str) -> Figure:
    """A figure that could not be taken, and why."""
    return Figure(key=key, label=label, unit=unit, missing=reason)


_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Target:
    """A goal: `figure.<field> <op> threshold`."""

    figure: str  # Figure.key
    op: str  # "<=" or ">="
    threshold: float
    field: str = "value"  # "value", "ratio", "p99", or an `extra` key
    text: str = ""  # how the goal reads in the issue

    def actual(self, fig: Figure | None) -> float | None:
        """The judged quantity from this figure, if there is one."""
        if fig is None or fig.missing is not None:
            return None
        if self.field == "ratio":
            return fig.ratio
        if self.field in ("value", "p95", "p99"):
            return getattr(fig, self.field)
        value = fig.extra.get(self.field)
        return float(value) if isinstance(value, (int, float)) else None

    def judge(self, figures: dict[str, Figure]) -> tuple[bool, str]:
        """(met, one-line explanation)."""
        fig = figures.get(self.figure)
        what = f"{fig.label if fig else self.figure}: {self.text}"
        if fig is None:
            return False, f"{what} — not measured (no such measurement in this run)"
        if fig.missing is not None:
            return False, f"{what} — not measured ({fig.missing})"
        actual = self.actual(fig)
        if actual is None:
            return False, f"{what} — not measured (no {self.field} figure)"
        met = _OPS[self.op](actual, self.threshold)
        unit = f" {fig.unit}" if self.field in ("value", "p95", "p99") else ""
        shown = "ratio" if self.field == "ratio" else self.field
        return met, f"{what} — {shown} {_fmt(actual)}{unit}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.4f}"


def render_table(figures: Iterable[Figure], targets: Sequence[Target]) -> str:
    """The human-readable table, one line per figure plus its notes."""
    by_figure: dict[str, list[Target]] = {}
    for t in targets:
        by_figure.setdefault(t.figure, []).append(t)
    lines: list[str] = []
    header = f"{'measurement':<54} {'p50/value':>11} {'p95':>9} {'p99':>9} {'unit':<7} {'baseline':>10} {'ratio':>6}  target"
    lines.append(header)
    lines.append("-" * len(header))
    for fig in figures:
        goals = by_figure.get(fig.key, [])
        if fig.missing is not None:
            mark = "; ".join(f"{t.text} ✗" for t in goals)
            lines.append(f"{fig.label:<54} not measured ({fig.missing})" + (f"  [{mark}]" if mark else ""))
            continue
        judged = []
        for t in goals:
            met, _ = t.judge({fig.key: fig})
            judged.append(f"{t.text} {'✓' if met else '✗'}")
        ratio = fig.ratio
        lines.append(
            f"{fig.label:<54} {_fmt(fig.value):>11} {_fmt(fig.p95):>9} {_fmt(fig.p99):>9} {fig.unit:<7} "
            f"{_fmt(fig.baseline):>10} {(f'{ratio:.2f}' if ratio is not None else '—'):>6}  {'; '.join(judged)}"
        )
        details = []
        if fig.baseline_label:
            details.append(f"baseline: {fig.baseline_label}")
        if fig.runs and len(fig.runs) > 1:
            details.append("runs " + ", ".join(_fmt(r) for r in fig.runs))
        for k, v in fig.extra.items():
            details.append(f"{k} {_fmt(v) if isinstance(v, (int, float)) else v}")
        if fig.note:
            details.append(fig.note)
        if details:
            lines.append(f"    {'; '.join(details)}")
    return "\n".join(lines)


def judge_all(figures: dict[str, Figure], targets: Sequence[Target]) -> tuple[list[str], list[str]]:
    """(met lines, missed lines)."""
    met: list[str] = []
    missed: list[str] = []
    for t in targets:
        ok, line = t.judge(figures)
        (met if ok else missed).append(line)
    return met, missed


def summary_lines(figures: dict[str, Figure], targets: Sequence[Target]) -> list[str]:
    """`targets: N met, M missed` followed by one line per missed target."""
    met, missed = judge_all(figures, targets)
    return [f"targets: {len(met)} met, {len(missed)} missed", *(f"  missed: {line}" for line in missed)]


def write_json(path: Path, *, meta: dict[str, Any], figures: Iterable[Figure], targets: Sequence[Target]) -> None:
    """Everything measured, with the judgement of each target, as JSON."""
    figs = {f.key: f for f in figures}
    judged = []
    for t in targets:
        ok, line = t.judge(figs)
        judged.append({**asdict(t), "met": ok, "actual": t.actual(figs.get(t.figure)), "line": line})
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "figures": [f.as_dict() for f in figs.values()], "targets": judged}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
