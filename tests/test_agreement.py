"""Reviewer agreement: the Wilson interval by hand, the groups, the stored prediction set (and
its migration), the History tab's rows, the CSV summary and the command line on SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import pytest
from alembic import command
from sqlalchemy import create_engine

from review.agreement import (
    HIT_COLUMNS,
    SUMMARY_COLUMNS,
    Agreement,
    agreement_summary,
    hit_rows,
    hit_summary,
    main,
    summary_csv,
    summary_rows,
    wilson_interval,
)
from review.marks import MarkScores
from review.report import prediction_set_text
from review.store import ReviewStore, alembic_config
from tests.review_drafts import LABELS, insert_old_review, make_draft
from ui.history import HistoryHandlers


def test_wilson_interval_matches_a_hand_computed_case():
    # 8 of 10, z = 1.96: centre (0.8 + 1.9208/10) / 1.38415 = 0.71675;
    # half 1.96 / 1.38415 · √(0.016 + 0.0096036) = 0.22658 → (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-4) and high == pytest.approx(0.9433, abs=5e-4)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(1, 2) == pytest.approx((0.0945, 0.9055), abs=5e-4)


@pytest.mark.parametrize(("k", "n"), [(3, 2), (-1, 4), (0, -1)])
def test_wilson_interval_refuses_impossible_counts(k, n):
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(k, n)


def _review(agrees, predicted, prediction_set):
    return SimpleNamespace(agrees=agrees, predicted_class=predicted, prediction_set=prediction_set)


def test_groups_by_class_and_certainty():
    reviews = [
        _review(True, "Normal", ["Normal"]),
        _review(True, "Normal", ["Normal"]),
        _review(False, "Normal", ["Normal", "COVID-19"]),
        _review(True, "Tuberculosis", ["Tuberculosis", "Normal"]),
        _review(False, "Tuberculosis", None),  # saved before sets: unknown
        _review(True, "Old class", None),  # a class of an older model
    ]
    summary = agreement_summary(reviews, LABELS)
    assert summary["overall"] == Agreement.of("all reviews", [True] * 4 + [False] * 2)
    assert summary["overall"].rate == pytest.approx(4 / 6)
    certainty = summary["per_certainty"]
    assert (certainty["certain"].cases, certainty["certain"].agree) == (2, 2)
    assert (certainty["uncertain"].cases, certainty["uncertain"].agree) == (2, 1)
    assert (certainty["unknown"].cases, certainty["unknown"].agree) == (2, 1)
    assert list(summary["per_class"]) == [*LABELS, "Old class"]
    never = summary["per_class"]["COVID-19"]  # never predicted
    assert (never.cases, never.rate, never.low, never.high) == (0, None, None, None)
    assert never.row() == ["COVID-19", 0, 0, "–", "–", "–"]
    normal = summary["per_class"]["Normal"]
    assert (normal.low, normal.high) == pytest.approx(wilson_interval(2, 3))


def test_an_empty_store_gives_zero_cases_everywhere():
    summary = agreement_summary([], LABELS)
    rows = summary_rows(summary)
    assert rows[0] == ["all reviews", 0, 0, "–", "–", "–"]
    assert [row[0] for row in rows[1:4]] == ["uncertain", "certain", "unknown"]
    assert all(row[1] == 0 for row in rows) and len(rows) == 4 + len(LABELS)
    parsed = list(csv.reader(io.StringIO(summary_csv(summary))))
    assert tuple(parsed[0]) == SUMMARY_COLUMNS and len(parsed) == len(rows) + 1


def test_the_set_is_stored_shown_and_counted(store):
    store.add(make_draft(review_id="a", prediction_set=["Tuberculosis", "Normal"], set_alpha=0.1))
    store.add(
        make_draft(
            review_id="b",
            prediction_set=["Tuberculosis"],
            set_alpha=0.1,
            agreement="disagree",
            correct_class="Normal",
        )
    )
    store.add(make_draft(review_id="c"))
    uncertain, certain, unknown = (store.get(i) for i in "abc")
    assert uncertain.prediction_set == ["Tuberculosis", "Normal"] and uncertain.set_alpha == 0.1
    assert unknown.prediction_set is None and unknown.as_row()["prediction_set"] == ""
    assert uncertain.as_row()["prediction_set"] == "Tuberculosis|Normal"
    assert prediction_set_text(uncertain) == "90 % set: Tuberculosis, Normal (uncertain)"
    assert prediction_set_text(certain) == "90 % set: Tuberculosis (certain)"
    assert prediction_set_text(unknown).startswith("none stored")
    history = HistoryHandlers(store, LABELS)
    rows = {row[0]: row for row in history.agreement("All", "disagree", None)}
    assert rows["all reviews"][:3] == ["all reviews", 3, 2]  # the agreement filter is ignored
    assert rows["uncertain"][:3] == ["uncertain", 1, 1] and rows["certain"][:3] == ["certain", 1, 0]
    assert rows["predicted COVID-19"][1] == 0
    exported = history.export_summary("Tuberculosis", "All", "dr-a")
    with open(exported, newline="") as handle:
        assert next(csv.DictReader(handle))["cases"] == "3"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prediction_set": []}, "prediction set"),
        ({"prediction_set": ["Cat"]}, "prediction set"),
        ({"prediction_set": ["Normal", "Normal"]}, "prediction set"),
    ],
)
def test_a_bad_set_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        make_draft(**changes).validate()


def test_old_rows_read_as_unknown_after_the_migration(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'reviews.sqlite'}")
    command.upgrade(alembic_config(engine), "0001")
    insert_old_review(engine, "old")
    engine.dispose()
    opened = ReviewStore.open(tmp_path)  # upgrades to 0002
    (old,) = opened.list()
    assert old.prediction_set is None and old.set_alpha is None
    assert agreement_summary(opened.list())["per_certainty"]["unknown"].cases == 1
    command.downgrade(alembic_config(opened.engine), "0001")  # and back
    opened.close()


def test_cli_on_the_store(store, capsys):
    store.add(make_draft(review_id="a", prediction_set=["Tuberculosis"], set_alpha=0.1))
    url = store.engine.url.render_as_string(hide_password=False)
    assert main(["--database", url, "--data-dir", str(store.data_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["overall"]["cases"] == 1 and printed["per_certainty"]["certain"]["agree"] == 1
    assert printed["per_class"]["COVID-19"]["rate"] is None
    assert main(["--database", url, "--data-dir", str(store.data_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == list(SUMMARY_COLUMNS) and table[1].startswith("all reviews")


def test_cli_without_a_store_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["--data-dir", str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "no reviews.sqlite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--database", "nosuchdb://x", "--data-dir", str(tmp_path)])
    assert stop.value.code == 2 and "cannot open the review store" in capsys.readouterr().err


def _marked(predicted, shown, hit_shown, hit_top, flat=0.1, version="v1", **extra):
    return SimpleNamespace(
        predicted_class=predicted,
        shown_class=shown,
        model_name="densenet201",
        model_version=version,
        hit_shown=hit_shown,
        hit_top=hit_top,
        energy_shown=None if hit_shown is None else 0.2 + 0.5 * hit_shown,
        energy_top=None if hit_top is None else 0.2 + 0.5 * hit_top,
        energy_flat=None if hit_shown is None else flat,
        **extra,
    )


def test_heatmap_hits_per_map_class_and_model_with_wilson_and_the_flat_baseline():
    reviews = [
        _marked("Tuberculosis", "Tuberculosis", 1.0, 1.0, flat=0.1),
        _marked("Tuberculosis", "Tuberculosis", 1.0, 1.0, flat=0.2),
        _marked("Tuberculosis", "COVID-19", 0.0, 1.0, flat=0.3),
        _marked("Normal", "Normal", 0.25, 0.25, flat=0.4, version="v2"),  # ties: a quarter in
        _marked("Normal", "Normal", None, None),  # not marked: left out
    ]
    rows = {(h.hits.group, h.heatmap): h for h in hit_summary(reviews, LABELS)}
    overall = rows["all marked reviews", "shown class"]
    assert (overall.hits.cases, overall.hits.agree) == (4, 2)
    assert (overall.hits.low, overall.hits.high) == pytest.approx(wilson_interval(2, 4))
    assert overall.flat == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)
    assert overall.energy == pytest.approx((0.7 + 0.7 + 0.2 + 0.325) / 4)  # 0.2 + 0.5 × hit
    top = rows["all marked reviews", "top class"]
    assert (top.hits.cases, top.hits.agree) == (4, 3)
    shown_tb, top_tb = (
        rows["class Tuberculosis", "shown class"],
        rows["class Tuberculosis", "top class"],
    )
    assert (shown_tb.hits.cases, shown_tb.hits.agree) == (2, 2)  # its shown map was TB's twice
    assert (top_tb.hits.cases, top_tb.hits.agree) == (3, 3)  # TB was on top three times
    covid = rows["class COVID-19", "shown class"]
    assert (covid.hits.cases, covid.hits.agree, covid.flat) == (1, 0, pytest.approx(0.3))
    never = rows["class Viral Pneumonia", "shown class"]
    assert never.row() == ["class Viral Pneumonia", "shown class", 0, 0, "–", "–", "–", "–", "–"]
    assert (rows["model densenet201 v1", "shown class"].hits.cases) == 3
    assert (rows["model densenet201 v2", "top class"].hits.agree) == 0
    assert [len(row) for row in hit_rows(list(rows.values()))] == [len(HIT_COLUMNS)] * len(rows)
    assert list(rows)[: 2 + len(LABELS)] == [  # the shown class's map first, then the top's
        ("all marked reviews", "shown class"),
        *((f"class {name}", "shown class") for name in LABELS),
        ("model densenet201 v1", "shown class"),
    ]


def test_cli_reports_the_heatmap_hits_beside_the_agreement(store, capsys):
    scores = MarkScores(1.0, 0.0, 0.6, 0.1, 0.05)
    store.add(make_draft(review_id="m", marks=[(1.0, 1.0, 20.0, 20.0)], scores=scores))
    store.add(make_draft(review_id="n"))
    url = store.engine.url.render_as_string(hide_password=False)
    assert main(["--database", url, "--data-dir", str(store.data_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["overall"]["cases"] == 2
    first, *_ = printed["heatmap_hits"]
    assert first == {
        "group": "all marked reviews",
        "heatmap": "shown class",
        "marked": 1,
        "hits": 1,
        "hit_rate": 1.0,
        "wilson_95_low": pytest.approx(wilson_interval(1, 1)[0]),
        "wilson_95_high": 1.0,
        "energy": 0.6,
        "flat_map": 0.05,
    }
    assert main(["--database", url, "--data-dir", str(store.data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [line.split() for line in lines].index(list(HIT_COLUMNS))
    assert lines[header + 1].split()[:7] == ["all", "marked", "reviews", "shown", "class", "1", "1"]
