"""LUNGCAM_AUTH parsing: inline pairs, a file of pairs, and the errors for bad entries."""

from __future__ import annotations

import pytest

from review.auth import parse_auth


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("   ", None),
        ("alice:pw", [("alice", "pw")]),
        ("alice:pw, bob:p:w:2", [("alice", "pw"), ("bob", "p:w:2")]),
        ("alice:pw,", [("alice", "pw")]),
    ],
)
def test_inline_pairs(value, expected):
    assert parse_auth(value) == expected


def test_file_of_pairs(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("# reviewers\nalice:pw\n\nbob:pw2, carol:pw3\n")
    assert parse_auth(str(path)) == [("alice", "pw"), ("bob", "pw2"), ("carol", "pw3")]


def test_environment_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("LUNGCAM_AUTH", "dr:secret")
    assert parse_auth() == [("dr", "secret")]
    monkeypatch.delenv("LUNGCAM_AUTH")
    assert parse_auth() is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alice", "'alice:<empty>' is not user:password"),
        ("alice:", "'alice:<empty>' is not user:password"),
        (":pw", "'<no user>' is not user:password"),
        (",", "holds no user:password pair"),
    ],
)
def test_bad_entries_say_which_one(value, message):
    with pytest.raises(ValueError, match=message):
        parse_auth(value)


def test_bad_file_entry_names_the_file(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("alice:pw\nbob\n")
    with pytest.raises(ValueError, match=f"'bob:<empty>'.*from file {path}"):
        parse_auth(str(path))
