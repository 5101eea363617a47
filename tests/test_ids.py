"""User ids become directory names: the pattern must refuse every path trick."""

import pytest

from brain.ids import is_valid_user_id, new_id


def test_new_ids_are_valid_and_distinct() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_user_id(i) and len(i) == 32 for i in ids)


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", "../x", "a/b", "a\\b", "/etc", "a\x00b", "a.b", " a", "a ", "é", "-a", "_a",
     "a" * 65, "a\n", "%2e%2e", "a*", "a>b", None, 5, ["a"]],
)
def test_tricks_are_refused(bad: object) -> None:
    assert not is_valid_user_id(bad)
