"""How often reviewers agree with the model's top class, with Wilson 95 % intervals:
overall, per predicted class, and for "uncertain" (conformal set of more than one class)
against "certain" cases; and how often the heatmaps' peaks lie in the reviewers' marks
(``review.marks``): overall, per class and per model version, beside a flat map's score on the
same marks. The History tab, its CSV export and this command line share it:

    python -m review.agreement --database postgresql://user@host/lungcam  [--json]
    python -m review.agreement --data-dir data       # SQLite at data/reviews.sqlite

Reviews saved before prediction sets existed (or with a model without a conformal section)
have no stored set and count as "unknown"; reviews without marks (or with "no focal finding")
have no heatmap scores and are left out of the hit rates. Opening a store upgrades its schema
to the newest revision (``ReviewStore.open``), as the app does.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from model.config import CLASS_NAMES
from review.cli import add_store_arguments, open_store
from review.marks import MarkedReview, peak_inside

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
CERTAINTY = ("uncertain", "certain", "unknown")
SUMMARY_COLUMNS = ("group", "cases", "agree", "agreement", "wilson_95_low", "wilson_95_high")
HIT_COLUMNS = (
    *("group", "heatmap", "marked", "hits", "hit_rate", "wilson_95_low", "wilson_95_high"),
    *("energy", "flat_map"),
)
# Each heatmap scored against the marks: the review's attributes for its class and its scores.
HEATMAPS = {
    "shown class": ("shown_class", "hit_shown", "energy_shown"),
    "top class": ("predicted_class", "hit_top", "energy_top"),
}


class Reviewed(Protocol):
    agrees: bool
    predicted_class: str
    prediction_set: list[str] | None


class Marked(MarkedReview, Protocol):
    model_name: str
    model_version: str


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (Wilson, JASA 1927; recommended over
    the Wald interval by Brown, Cai & DasGupta, Statistical Science 2001). ``None`` when n = 0.

    8 of 10 → (0.490, 0.943).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 ≤ successes ≤ n; got {successes} of {n}")
    if n == 0:
        return None
    share = successes / n
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Agreement:
    """One group's agreement: ``agree`` of ``cases`` reviews, rate and Wilson 95 % bounds
    (``None`` when the group has no reviews)."""

    group: str
    cases: int
    agree: int
    rate: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, group: str, verdicts: Sequence[bool]) -> Agreement:
        agree, cases = sum(map(bool, verdicts)), len(verdicts)
        bounds = wilson_interval(agree, cases)
        rate = agree / cases if cases else None
        return cls(group, cases, agree, rate, *(bounds or (None, None)))

    def row(self) -> list[Any]:
        """A table row: group, cases, agree, then the rate and bounds rounded (or "–")."""
        return [self.group, self.cases, self.agree, *map(_shown, (self.rate, self.low, self.high))]


def _shown(value: float | None) -> float | str:
    return "–" if value is None else round(value, 3)


@dataclass(frozen=True)
class HeatmapHits:
    """How often one group's heatmaps (of the class shown, or of the top class) put their
    peak in the reviewers' marks: ``hits.agree`` of ``hits.cases`` marked reviews, with Wilson
    95 % bounds; ``energy``, the mean share of their energy in the marks; ``flat``, a flat
    map's mean score on the same marks (their area share: a flat map's energy share and its
    expected hit rate alike). ``None`` when the group has no marked reviews."""

    hits: Agreement
    heatmap: str
    energy: float | None
    flat: float | None

    @classmethod
    def of(cls, group: str, heatmap: str, reviews: Sequence[Marked]) -> HeatmapHits:
        _, hit, energy = HEATMAPS[heatmap]
        verdicts = [peak_inside(getattr(r, hit)) for r in reviews]
        energies = [getattr(r, energy) for r in reviews]
        flat = [r.energy_flat for r in reviews]
        return cls(Agreement.of(group, verdicts), heatmap, _mean(energies), _mean(flat))

    def values(self) -> list[Any]:
        """The row's values unrounded, in ``HIT_COLUMNS`` order."""
        h = self.hits
        counts = [h.group, self.heatmap, h.cases, h.agree]
        return [*counts, h.rate, h.low, h.high, self.energy, self.flat]

    def row(self) -> list[Any]:
        """A table row (``HIT_COLUMNS``): the counts, then every share rounded (or "–")."""
        values = self.values()
        return values[:4] + [_shown(v) for v in values[4:]]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def hit_summary(reviews: Iterable[Marked], label_names: Sequence[str] = ()) -> list[HeatmapHits]:
    """Heatmap hits over the marked ``reviews`` (those with scores): for the shown class's map,
    then the top class's, overall, per class (the class whose map it is; every class of
    ``label_names`` listed) and per model version."""
    marked = [r for r in reviews if r.hit_shown is not None]
    classes = _classes(
        label_names, {r.shown_class for r in marked} | {r.predicted_class for r in marked}
    )
    models = sorted({_model(r) for r in marked})
    hits: list[HeatmapHits] = []
    for heatmap, (attribute, _, _) in HEATMAPS.items():
        hits.append(HeatmapHits.of("all marked reviews", heatmap, marked))
        hits += [
            HeatmapHits.of(
                f"class {name}", heatmap, [r for r in marked if getattr(r, attribute) == name]
            )
            for name in classes
        ]
        hits += [
            HeatmapHits.of(f"model {model}", heatmap, [r for r in marked if _model(r) == model])
            for model in models
        ]
    return hits


def _model(review: Marked) -> str:
    return f"{review.model_name} {review.model_version}"


def hit_rows(hits: Sequence[HeatmapHits]) -> list[list[Any]]:
    return [h.row() for h in hits]


def _classes(label_names: Sequence[str], seen: set[str]) -> list[str]:
    # Every class of the model, then classes stored by another model after them.
    return list(label_names) + sorted(seen - set(label_names))


def certainty(review: Reviewed) -> str:
    """ "uncertain" (set of more than one class), "certain" (one class) or "unknown"."""
    if review.prediction_set is None:
        return "unknown"
    return "uncertain" if len(review.prediction_set) > 1 else "certain"


def agreement_summary(
    reviews: Iterable[Reviewed], label_names: Sequence[str] = ()
) -> dict[str, Any]:
    """Agreement overall, per predicted class (every class of ``label_names`` listed, even one
    never predicted; classes stored by another model after them) and per certainty."""
    items = list(reviews)
    classes = _classes(label_names, {r.predicted_class for r in items})
    return {
        "overall": Agreement.of("all reviews", [r.agrees for r in items]),
        "per_class": {
            name: Agreement.of(name, [r.agrees for r in items if r.predicted_class == name])
            for name in classes
        },
        "per_certainty": {
            kind: Agreement.of(kind, [r.agrees for r in items if certainty(r) == kind])
            for kind in CERTAINTY
        },
    }


def summary_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """The summary as table rows (``SUMMARY_COLUMNS``): overall, certainty, then classes."""
    groups = [summary["overall"], *summary["per_certainty"].values()]
    groups += [
        Agreement(f"predicted {g.group}", g.cases, g.agree, g.rate, g.low, g.high)
        for g in summary["per_class"].values()
    ]
    return [g.row() for g in groups]


def summary_json(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        key: asdict(value)
        if isinstance(value, Agreement)
        else {k: asdict(v) for k, v in value.items()}
        for key, value in summary.items()
    }


def summary_csv(summary: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(summary_rows(summary))
    return buffer.getvalue()


def write_summary_csv(folder: str | Path, summary: dict[str, Any]) -> Path:
    """``folder/agreement-<content hash>.csv`` (named by content, like the rows export)."""
    text = summary_csv(summary)
    out = Path(folder) / f"agreement-{hashlib.sha256(text.encode()).hexdigest()[:16]}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned text for the terminal."""
    rows = [list(columns), *rows]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agreement",
        description="Reviewer agreement with the model's top class, and heatmap peaks in the "
        "reviewers' marks.",
    )
    add_store_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    store = open_store(parser, args)
    try:
        reviews = store.list()
    finally:
        store.close()
    summary, hits = agreement_summary(reviews, CLASS_NAMES), hit_summary(reviews, CLASS_NAMES)
    if args.json:
        heatmap_hits = [dict(zip(HIT_COLUMNS, h.values(), strict=True)) for h in hits]
        print(json.dumps({**summary_json(summary), "heatmap_hits": heatmap_hits}, indent=2))
    else:
        print(format_table(SUMMARY_COLUMNS, summary_rows(summary)))
        print("\nHeatmap peaks in the reviewers' marks (Wilson 95 %), beside a flat map:")
        print(format_table(HIT_COLUMNS, hit_rows(hits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
