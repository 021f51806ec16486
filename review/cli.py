"""What the review command lines share: which store to open, and opening it with a one-line
error (``python -m review.agreement``, ``python -m review.export_marks``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from review.store import DATABASE_URL_ENV, ReviewStore


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--database`` and ``--data-dir``, as the app picks its store."""
    parser.add_argument(
        "--database",
        default=None,
        help=f"SQLAlchemy URL, e.g. postgresql://user@host/db (default: ${DATABASE_URL_ENV}, "
        "else SQLite in --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("LUNGCAM_DATA_DIR") or "data",
        help="the app's data folder, holding reviews.sqlite and the stored images "
        "(default: $LUNGCAM_DATA_DIR or data)",
    )


def open_store(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ReviewStore:
    """The store ``args`` name, its schema upgraded (``ReviewStore.open``); exit status 2 with
    one line when there is none or it cannot be opened."""
    url = args.database or os.environ.get(DATABASE_URL_ENV)
    if url is None and not (Path(args.data_dir) / "reviews.sqlite").is_file():
        parser.exit(
            2,
            f"{parser.prog}: error: no reviews.sqlite in {args.data_dir!r}; "
            "pass --data-dir or --database\n",
        )
    try:
        return ReviewStore.open(args.data_dir, url)
    except (OSError, ValueError, SQLAlchemyError) as err:  # one line, no traceback
        parser.exit(2, f"{parser.prog}: error: cannot open the review store: {err}\n")
