"""How often reviewers agree with the model's top class, with Wilson 95 % intervals:
overall, per predicted class, and for "uncertain" (conformal set of more than one class)
against "certain" cases. The History tab, its CSV export and this command line share it:

    python -m review.agreement --database postgresql://user@host/lungcam  [--json]
    python -m review.agreement --data-dir data       # SQLite at data/reviews.sqlite

Reviews saved before prediction sets existed (or with a model without a conformal section)
have no stored set and count as "unknown". Opening a store upgrades its schema to the newest
revision (``ReviewStore.open``), as the app does.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from model.config import CLASS_NAMES
from review.store import DATABASE_URL_ENV, ReviewStore

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
CERTAINTY = ("uncertain", "certain", "unknown")
SUMMARY_COLUMNS = ("group", "cases", "agree", "agreement", "wilson_95_low", "wilson_95_high")


class Reviewed(Protocol):
    agrees: bool
    predicted_class: str
    prediction_set: list[str] | None


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
        values = [self.rate, self.low, self.high]
        return [self.group, self.cases, self.agree] + [
            "–" if v is None else round(v, 3) for v in values
        ]


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
    classes = list(label_names) + sorted({r.predicted_class for r in items} - set(label_names))
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


def format_summary(summary: dict[str, Any]) -> str:
    """Aligned text for the terminal."""
    rows = [list(SUMMARY_COLUMNS), *summary_rows(summary)]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(SUMMARY_COLUMNS))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agreement", description="Reviewer agreement with the model's top class."
    )
    parser.add_argument(
        "--database",
        default=None,
        help=f"SQLAlchemy URL, e.g. postgresql://user@host/db (default: ${DATABASE_URL_ENV}, "
        "else SQLite in --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("LUNGCAM_DATA_DIR") or "data",
        help="the app's data folder, holding reviews.sqlite (default: $LUNGCAM_DATA_DIR or data)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    url = args.database or os.environ.get(DATABASE_URL_ENV)
    if url is None and not (Path(args.data_dir) / "reviews.sqlite").is_file():
        parser.exit(
            2,
            f"{parser.prog}: error: no reviews.sqlite in {args.data_dir!r}; "
            "pass --data-dir or --database\n",
        )
    try:
        store = ReviewStore.open(args.data_dir, url)
    except (OSError, ValueError, SQLAlchemyError) as err:  # one line, no traceback
        parser.exit(2, f"{parser.prog}: error: cannot open the review store: {err}\n")
    try:
        summary = agreement_summary(store.list(), CLASS_NAMES)
    finally:
        store.close()
    if args.json:
        print(json.dumps(summary_json(summary), indent=2))
    else:
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
