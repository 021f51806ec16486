"""The ``label_sets`` section of metrics.json: images labelled with a set of classes.

A ``Pneumonia`` class folder (e.g. ``../shared/data/adult-extra``) is the label set
{Bacterial, Viral Pneumonia}: its images are right when the top class is in the set, and are
scored apart from the single-label ones (``training.metrics.label_set_metrics``) overall, per
view (the manifest's ``view``) and per source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.data import ImageRecord, allowed_mask
from training.metrics import label_set_metrics


def label_set_section(
    records: Sequence[ImageRecord], probabilities: np.ndarray, label_names: list[str]
) -> dict[str, Any]:
    """The ``label_sets`` section: ``label_set_metrics`` of the label-set images (calibrated
    probabilities) overall, per view (the manifest's ``view``; "unknown" when not given) and
    per source, with how many images carry each set."""
    allowed = allowed_mask(list(records), len(label_names))
    views = np.array([r.view or "unknown" for r in records])
    sources = np.array([r.source or "unknown" for r in records])

    def per(groups: np.ndarray) -> dict[str, dict[str, Any]]:
        return {
            group: label_set_metrics(
                allowed[groups == group], probabilities[groups == group], label_names
            )
            for group in sorted(set(groups.tolist()))
        }

    sets = Counter(" or ".join(label_names[k] for k in r.allowed) for r in records)
    return {
        "description": "images labelled with a set of classes (a Pneumonia folder: either "
        "pneumonia class); right when the top class is in the set; set_probability: the "
        "calibrated probabilities summed over the set",
        "sets": dict(sorted(sets.items())),
        **label_set_metrics(allowed, probabilities, label_names),
        "per_view": per(views),
        "per_source": per(sources),
    }


def format_label_sets(section: dict[str, Any]) -> str:
    """One line: n, accuracy and mean set probability overall, accuracy per view, and the
    classes they are called (shares of 5 % and more)."""
    views = ", ".join(
        f"{v} {b['accuracy']:.2f} (n={b['n']})" for v, b in section["per_view"].items()
    )
    called = ", ".join(
        f"{name} {share:.0%}" for name, share in section["called"].items() if share >= 0.05
    )
    return (
        f"Label sets ({', '.join(section['sets'])}): n={section['n']}, top class in the set "
        f"{section['accuracy']:.3f}, mean p(set) {section['set_probability']:.3f}; "
        f"per view {views}; called {called}"
    )
