"""LUNGCAM_AUTH parsing (inline pairs, a file of pairs, the errors for bad entries) and the
lock-out after repeated wrong passwords, on a fake clock."""

from __future__ import annotations

import pytest

from review.auth import (
    FIRST_LOCK_S,
    FREE_TRIES,
    LONGEST_LOCK_S,
    LoginGuard,
    LoginLocked,
    parse_auth,
)


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


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_wrong_passwords_lock_the_name_out_for_doubling_bounded_times():
    clock = FakeClock()
    guard = LoginGuard([("alice", "pw"), ("bob", "pw2")], clock=clock)
    assert [guard.check("alice", "wrong") for _ in range(FREE_TRIES)] == [False] * FREE_TRIES
    with pytest.raises(LoginLocked, match="refused for 30 s more") as locked:
        guard.check("alice", "pw")  # the right password is refused during the lock-out
    assert locked.value.retry_after == FIRST_LOCK_S
    for _ in range(25):  # attempts during a lock-out are neither checked nor counted
        with pytest.raises(LoginLocked):
            guard.check("alice", "wrong")
    assert guard.check("bob", "pw2") is True  # per name: bob is not locked
    clock.now += 29.0
    with pytest.raises(LoginLocked, match="refused for 1 s more"):
        guard.check("alice", "pw")
    clock.now += 1.0
    assert guard.check("alice", "wrong") is False  # the 6th wrong password: 60 s
    clock.now += 59.0
    with pytest.raises(LoginLocked):
        guard.check("alice", "pw")
    clock.now += 1.0
    assert guard.check("alice", "pw") is True  # a right password outside a lock-out resets
    assert guard.check("alice", "wrong") is False and guard.check("alice", "pw") is True


def test_lock_out_grows_exponentially_up_to_the_longest():
    guard = LoginGuard([("alice", "pw")], clock=FakeClock())
    waits = [guard.lock_seconds(count) for count in range(1, FREE_TRIES + 8)]
    assert waits[: FREE_TRIES - 1] == [0.0] * (FREE_TRIES - 1)
    assert waits[FREE_TRIES - 1 :] == [30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 900.0, 900.0]
    assert guard.lock_seconds(10**6) == LONGEST_LOCK_S  # no overflow, however many


def test_unknown_names_lock_out_alike_and_memory_stays_bounded():
    clock = FakeClock()
    guard = LoginGuard([("alice", "pw")], clock=clock, max_names=3)
    for _ in range(FREE_TRIES):
        assert guard.check("nobody", "x") is False
    with pytest.raises(LoginLocked):  # the same answer as for a real name
        guard.check("nobody", "x")
    for name in ("n1", "n2", "n3"):
        guard.check(name, "x")
    assert list(guard.failures) == ["n1", "n2", "n3"]
