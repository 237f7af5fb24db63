"""Figures: samples from several runs, summarised as median/min/max against a target."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    target: float | None = None  # None: reported for context only
    higher_is_better: bool = False
    samples: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, value: float) -> None:
        self.samples.append(float(value))

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def verdict(self) -> str:
        if self.target is None or self.median is None:
            return ""
        ok = self.median >= self.target if self.higher_is_better else self.median <= self.target
        return "ok" if ok else "MISSED"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'≥' if self.higher_is_better else '≤'} {_num(self.target)}"

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label, "unit": self.unit,
            "median": self.median, "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None, "runs": len(self.samples),
            "target": self.target, "target_is_minimum": self.higher_is_better if self.target is not None else None,
            "verdict": self.verdict() or None, "samples": self.samples, "note": self.note,
        }


class Figures:
    def __init__(self) -> None:
        self.items: dict[str, Figure] = {}

    def get(self, key: str, label: str, unit: str, target: float | None = None, *,
            higher_is_better: bool = False, note: str = "") -> Figure:
        if key not in self.items:
            self.items[key] = Figure(key, label, unit, target, higher_is_better, note=note)
        return self.items[key]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(figures: Figures) -> str:
    rows = [("figure", "unit", "median", "min", "max", "runs", "target", "")]
    for f in figures.items.values():
        rows.append((f.label, f.unit, _num(f.median), _num(min(f.samples) if f.samples else None),
                     _num(max(f.samples) if f.samples else None), str(len(f.samples)), f.target_text(), f.verdict()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(row[2:6], widths[2:6])]
        cells += [row[6].ljust(widths[6]), row[7]]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)
