"""The review store's Alembic migrations, on SQLite and a real PostgreSQL server."""

from __future__ import annotations

from dataclasses import fields

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from review.marks import MarkScores
from review.store import Base, ReviewStore, alembic_config
from tests.review_drafts import insert_old_review, make_draft


def test_migrations_build_exactly_the_models_and_reopening_is_a_no_op(store):
    head = ScriptDirectory.from_config(alembic_config(store.engine)).get_current_head()
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head
        assert compare_metadata(context, Base.metadata) == []
    store.add(make_draft(review_id="kept"))
    again = ReviewStore.open(store.data_dir, store.engine.url.render_as_string(False))
    assert [r.review_id for r in again.list()] == ["kept"]
    again.close()


MARK_COLUMNS = {"marks", "no_finding", *(f.name for f in fields(MarkScores))}


def test_the_marks_migration_goes_up_and_down_keeping_every_review(store):
    config = alembic_config(store.engine)

    def columns() -> set[str]:
        return {c["name"] for c in inspect(store.engine).get_columns("reviews")}

    command.downgrade(config, "0003")
    assert columns().isdisjoint(MARK_COLUMNS)
    insert_old_review(store.engine, "old")
    command.upgrade(config, "head")
    assert columns() >= MARK_COLUMNS
    old = store.get("old")
    assert (old.marks, old.no_finding, old.hit_shown, old.energy_flat) == (None, False, None, None)
    assert old.as_row()["marks"] == "" and old.as_row()["hit_shown"] == ""
    scores = MarkScores(1.0, 0.0, 0.5, 0.25, 0.125)
    store.add(make_draft(review_id="marked", marks=[(1.0, 2.0, 30.5, 40.0)], scores=scores))
    marked = store.get("marked")
    assert marked.marks == [[1.0, 2.0, 30.5, 40.0]] and marked.energy_top == 0.25

    command.downgrade(config, "0003")
    assert columns().isdisjoint(MARK_COLUMNS)
    with store.engine.connect() as connection:
        kept = connection.execute(text("SELECT review_id FROM reviews ORDER BY id")).scalars()
        assert list(kept) == ["old", "marked"]
    command.upgrade(config, "head")
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    assert store.get("marked").marks is None  # what a downgrade drops is gone
