"""The checks on the parent's rewordings of corrected prompts (gate part r), without a database."""

from __future__ import annotations

import pytest

from pgreflect.improve.rephrase import accepted, clean, rejection


@pytest.mark.parametrize(("original", "raw", "expected"), [
    ("What is the capital of Zorbia?", "Rewritten question: Which city is Zorbia's capital?",
     "Which city is Zorbia's capital?"),
    ("What is the capital of Zorbia?", '"Which city is Zorbia\'s capital?"\nThe capital is Quuxville.',
     "Which city is Zorbia's capital?"),
    ("What is the capital of Zorbia?", "\n\n  Name the capital city of Zorbia.  ", "Name the capital city of Zorbia."),
    # a prompt of several lines (options) keeps every line of its rewording
    ("Which is a fruit?\nA. Kale\nB. Pear", "Which one is a fruit?\nA. Kale\nB. Pear",
     "Which one is a fruit?\nA. Kale\nB. Pear"),
])
def test_clean_keeps_the_question_only(original: str, raw: str, expected: str) -> None:
    assert clean(original, raw) == expected


@pytest.mark.parametrize(("rephrasing", "reason"), [
    ("", "empty"),
    ("what is the capital of zorbia", "same as the original"),
    ("Quuxville is the capital; what is the capital of Zorbia?", "contains the answer"),
    ("Which city is the capital of Zorbia? " * 10, "too long"),
    ("Which city is Zorbia's capital?", None),
])
def test_rejection_says_why(rephrasing: str, reason: str | None) -> None:
    assert rejection("What is the capital of Zorbia?", rephrasing, "Quuxville") == reason


def test_accepted_keeps_only_finished_acceptable_rewordings() -> None:
    rows = [(1, "succeeded", "What is 2 + 2?", "What do you get when you add 2 and 2?", "4"),
            (2, "failed", "What is 3 + 3?", None, "6"),
            (3, "succeeded", "What is 5 + 5?", "5 + 5 = 10. What is 5 + 5?", "10"),
            (4, "succeeded", "Who painted the Blue Fig?", "Who painted the Blue Fig?", "Anna Morrow")]
    assert accepted(rows) == [{"example_request_id": 1, "prompt": "What do you get when you add 2 and 2?"}]
