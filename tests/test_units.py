"""Pure functions: sampling, named-query loading, CLI flags and their environment twins."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pgreflect.cli import build_parser
from pgreflect.sampling import choose_token, log_softmax, token_logprob
from pgreflect.sql import parse_queries, query

ROOT = Path(__file__).resolve().parents[1]


def test_log_softmax_is_normalised_and_matches_token_logprob() -> None:
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 5
    lp = log_softmax(logits)
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert token_logprob(logits, 17) == pytest.approx(lp[17])


def test_greedy_and_top_k_one_pick_the_argmax() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(5000)
    best = int(np.argmax(logits))
    assert choose_token(logits, 0.0, 0, 1.0, rng) == best
    assert all(choose_token(logits, 1.5, 1, 1.0, rng) == best for _ in range(20))
    assert all(choose_token(logits, 1.0, 0, 1e-6, rng) == best for _ in range(20))


def test_sampling_follows_the_distribution() -> None:
    logits = np.log(np.array([0.7, 0.2, 0.1]))
    rng = np.random.default_rng(2)
    counts = np.bincount([choose_token(logits, 1.0, 0, 1.0, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.7, 0.2, 0.1], atol=0.03)
    # top_p 0.75 keeps the two most likely tokens only
    kept = {choose_token(logits, 1.0, 0, 0.75, rng) for _ in range(500)}
    assert kept == {0, 1}


def test_top_p_falls_back_to_the_full_vocabulary_when_the_prefilter_is_too_small() -> None:
    logits = np.zeros(5000)  # uniform: the top 1000 hold only 20% of the mass
    rng = np.random.default_rng(3)
    picks = {choose_token(logits, 1.0, 0, 0.9, rng) for _ in range(3000)}
    assert max(picks) >= 1000


def test_parse_queries() -> None:
    q = parse_queries("-- name: a\nSELECT 1;\n\n-- comment\n-- name: b\nSELECT %(x)s\n-- trailing\n")
    assert q == {"a": "SELECT 1", "b": "SELECT %(x)s"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    with pytest.raises(KeyError, match="no query named"):
        query("does_not_exist")


def test_no_sql_strings_in_the_runtime_code() -> None:
    """Runtime SQL lives in db/queries/*.sql, loaded by name."""
    pattern = re.compile(r"""["'](SELECT|INSERT|UPDATE|DELETE|LISTEN)\s""")
    offenders = [p.name for p in (ROOT / "worker" / "pgreflect").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def _flags(parser) -> set[str]:  # type: ignore[no-untyped-def]
    found = set()
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for sub in action.choices.values():
                found |= _flags(sub)
        for opt in action.option_strings:
            env = re.search(r"\[env (PGREFLECT_[A-Z_]+)", action.help or "")
            if opt.startswith("--") and env:
                found.add((opt, env.group(1)))
    return found


def test_every_env_flag_is_documented() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    flags = _flags(build_parser())
    assert len(flags) > 15
    missing = [f"{flag} ({env})" for flag, env in sorted(flags) if f"`{env}`" not in docs]
    assert missing == []


def test_flags_take_their_default_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PGREFLECT_CONCURRENCY", "7")
    monkeypatch.setenv("PGREFLECT_ONCE", "true")
    monkeypatch.setenv("PGREFLECT_MODEL_VERSION", "a,b")
    args = build_parser().parse_args(["worker"])
    assert (args.concurrency, args.once, args.model_version) == (7, True, ["a", "b"])
    assert build_parser().parse_args(["worker", "--concurrency", "2"]).concurrency == 2


def test_option_letters_and_the_answers_letter_token() -> None:
    from pgreflect.signals import choice_token, option_signals, prompt_options

    assert prompt_options("Q?\nA. one\nB. two\nC. three\nD. four\nAnswer with only the letter.") == "ABCD"
    assert prompt_options("Q?\n(A) one\n(B) two") == "AB"
    assert prompt_options("Q?\nA. one\nC. three") is None  # a gap: not a list of options
    assert prompt_options("A. lone line") is None and prompt_options("no options here") is None
    assert choice_token(["The", " answer", " is", " B", "."], "The answer is B.") == 3
    assert choice_token(["(", "C", ")"], "(C)") == 1
    assert choice_token(["Paris"], "Paris") is None
    assert choice_token(["B"], "C") is None  # texts that do not line up
    # a reasoning answer names options on the way; its pick is the letter it boxes at the end, as scored
    reasoning = ["Option", " C", " fits", " less", ".", " The", " answer", " is", " \\", "boxed", "{", "D", "}."]
    assert choice_token(reasoning, "".join(reasoning)) == 11
    s = option_signals({"A": 0.7, "B": 0.2, "C": 0.1, "D": 0.0})
    assert s["option_max_prob"] == 0.7 and s["option_margin"] == pytest.approx(0.5)
    assert option_signals({"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25})["option_entropy"] == pytest.approx(1.0)
    assert option_signals({"A": 1.0, "B": 0.0})["option_entropy"] == 0.0


def test_question_kinds() -> None:
    from pgreflect.signals import kind_signals, question_kind

    assert question_kind("Q?\nA. x\nB. y\nAnswer with only the letter.", "B") == "choice"
    assert question_kind("How many legs does a spider have?", "Eight legs.") == "number"
    assert question_kind("Solve it. Put the final answer, a number alone, on the last line.", "x\n4") == "number"
    assert question_kind("Describe Paris.", "Paris is the capital of France and its largest city by far.") == "long"
    assert question_kind("Capital of France?", "Paris") == "short"
    assert kind_signals("Capital of France?", "Paris") == {"kind_choice": 0.0, "kind_number": 0.0, "kind_long": 0.0}
    assert kind_signals("How many?", "3")["kind_number"] == 1.0
