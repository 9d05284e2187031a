"""Follow-ups on answers: the grammar-constrained critique and the agreement signal."""

from __future__ import annotations

import json

import psycopg
import pytest

from pgreflect.agreement import agreement, answers_agree
from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import BackgroundWorker, client, drain, use_noop, wait_for, worker


def _enable(db: Database, critique: float, agreement_share: float) -> None:
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = to_jsonb(%s::float8) WHERE key = 'critique_fraction'",
                     (critique,))
        conn.execute("UPDATE reflect.settings SET value = to_jsonb(%s::float8) WHERE key = 'agreement_fraction'",
                     (agreement_share,))


def test_agreement_rules() -> None:
    assert answers_agree("B", "The answer is B.")
    assert not answers_agree("B", "C")
    assert answers_agree("It is 42.", "42")
    assert not answers_agree("41", "42")
    assert answers_agree("Paris", "paris.")
    long_a = "The mitochondria is the powerhouse of the cell and produces most of its ATP through respiration"
    long_b = "Mitochondria are the powerhouse of the cell, producing most of its ATP through cellular respiration"
    assert answers_agree(long_a, long_b)  # word overlap without an embedder
    assert agreement("B", ["B", "C", "(B)", "D"]) == 0.5


def test_reasoned_answers_agree_on_what_they_state() -> None:
    """Worked solutions and reasoned choices agree when they reach the same answer, whatever the wording; a
    sample cut off before its answer agrees with none. (Before, any two answers over 8 words were compared by
    their wording: two solutions of one problem read alike whether or not they reach the same number.)"""
    solution = ("Janet's ducks lay 16 eggs. She eats 3 and bakes with 4, so she sells 16 - 3 - 4 = 9 eggs at $2: "
                "\\boxed{18}")
    assert answers_agree(solution, "Eggs left: 16 - 7 = 9. Each sells for 2 dollars, 9 * 2 = 18. The answer is 18.")
    assert not answers_agree(solution, solution.replace("\\boxed{18}", "\\boxed{20}"))
    assert not answers_agree(solution, solution.rsplit(",", 1)[0])  # the same reasoning, cut off: no answer
    assert answers_agree(solution, "18")
    assert answers_agree("1,000", "After adding the three amounts we get \\boxed{1000}")
    date = "Yesterday was 04/30/2021, so today is one day later, which is option (A) in the list: \\boxed{A}"
    assert answers_agree(date, "One day after 04/30/2021 is 05/01/2021. So the answer is (A).")
    assert not answers_agree(date, date.replace("\\boxed{A}", "\\boxed{B}"))
    # Stated dates and expressions compare as text, not by their last number.
    assert not answers_agree("count the days from the start of the month: \\boxed{05/01/2021}",
                             "count the days from the start of the month: \\boxed{06/01/2021}")
    assert not answers_agree("simplify both the numerator and the denominator: \\boxed{\\frac{1}{2}}",
                             "simplify both the numerator and the denominator: \\boxed{\\frac{3}{2}}")
    assert agreement(solution, ["The answer is 18.", "\\boxed{18}", "#### 17"]) == 2 / 3


def test_every_critique_parses_even_from_a_random_model(db: Database, keyring: Keyring) -> None:
    _enable(db, critique=1.0, agreement_share=0.0)
    prompts = ["What is 2 + 2?", "Name a prime number larger than 10.", 'Say "hello" in French; use "quotes".']
    with client(db, keyring) as c:
        ids = [c.submit(p, params={"max_tokens": 6}) for p in prompts]
    stats = drain(db, keyring, memory="off")
    assert stats.succeeded == 3 and stats.followups == 3
    with client(db, keyring) as c:
        for rid in ids:
            row = c.get(rid)
            critique = json.loads(row["critique"])  # the tiny model writes nonsense, but valid JSON
            assert critique["verdict"] in ("correct", "partially_correct", "incorrect", "unsure")
            assert isinstance(critique["issues"], list) and len(critique["issues"]) <= 3
            for issue in critique["issues"]:
                assert issue["severity"] in ("low", "medium", "high") and len(issue["description"]) <= 80
            assert row["critique_verdict"] == critique["verdict"]
            assert "critique_verdict" in row["signals"] and row["followups_pending"] == 0
    enc = db.scalar("SELECT critique_enc FROM reflect.critiques WHERE request_id = %s", (ids[0],))
    assert b"verdict" not in bytes(enc)


def test_agreement_follow_up(db: Database, keyring: Keyring) -> None:
    _enable(db, critique=0.0, agreement_share=1.0)
    with client(db, keyring) as c:
        rid = c.submit("anything", model_version="noop")
    drain(db, keyring, backend="noop")  # every noop sample says "ok", like the answer
    with client(db, keyring) as c:
        assert c.get(rid)["signals"]["agreement"] == 1.0
    _enable(db, critique=0.0, agreement_share=1.0)
    with client(db, keyring) as c:
        rid = c.submit("Write one random word.", params={"max_tokens": 4})
    drain(db, keyring, memory="off")  # samples at temperature 0.7 from the random model
    with client(db, keyring) as c:
        value = c.get(rid)["signals"]["agreement"]
    # the share of 3 samples that agree with the answer: 0, 1/3, 2/3 or 1
    assert any(abs(value - k / 3) < 1e-9 for k in range(4)), value


def test_evaluation_traffic_always_gets_follow_ups(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    _enable(db, critique=1e-9, agreement_share=1e-9)  # on, but (practically) never for other traffic
    with client(db, keyring) as c:
        normal = c.submit("normal")
        evaluated = c.submit("evaluated", caller="pgreflect-eval")
    drain(db, keyring, backend="noop")
    with db.admin() as conn:
        kinds = conn.execute("SELECT request_id, kind, state FROM reflect.followups ORDER BY 1, 2").fetchall()
    assert kinds == [(evaluated, "agreement", "succeeded"), (evaluated, "critique", "succeeded")]
    assert normal not in {k[0] for k in kinds}
    _enable(db, critique=0.0, agreement_share=0.0)  # 0 turns a follow-up off for evaluation traffic too
    with client(db, keyring) as c:
        c.submit("evaluated again", caller="pgreflect-eval")
    drain(db, keyring, backend="noop")
    assert db.scalar("SELECT count(*) FROM reflect.followups") == 2


def test_by_default_follow_ups_go_to_low_confidence_answers_only(db: Database, keyring: Keyring) -> None:
    """followups_scope = low_confidence (the shipped default): an answer under its request's confidence
    threshold, or one that failed a rule check, gets critique and agreement; a confident one gets none;
    evaluation traffic always does."""
    use_noop(db)
    _enable(db, critique=1.0, agreement_share=1.0)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '\"low_confidence\"' WHERE key = 'followups_scope'")
    with client(db, keyring) as c:
        low = c.submit("unsure", params={"confidence_threshold": 1.0})  # every confidence is under 1
        sure = c.submit("sure", params={"confidence_threshold": 0.0})
        # noop answers "ok": a rule check fails (the format asked for is a letter)
        misformatted = c.submit("Answer with only the letter.", params={"confidence_threshold": 0.0})
        evaluated = c.submit("evaluated", params={"confidence_threshold": 0.0}, caller="pgreflect-eval")
    drain(db, keyring, backend="noop")
    with db.admin() as conn:
        rows = conn.execute("SELECT request_id, count(*) FROM reflect.followups GROUP BY 1").fetchall()
        rule = conn.execute("SELECT value FROM reflect.answer_signals WHERE request_id = %s "
                            "AND name = 'rule_format'", (misformatted,)).fetchone()
    got = dict(rows)
    assert rule == (1.0,)
    assert got.get(low) == 2 and got.get(evaluated) == 2 and got.get(misformatted) == 2 and sure not in got


def test_bad_critiques_are_refused_and_ratings_checked(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    _enable(db, critique=1.0, agreement_share=0.0)
    with client(db, keyring) as c:
        rid = c.submit("hello")
    drain(db, keyring, backend="noop", followups=False)
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        (row,) = conn.execute(query("claim_followups"), {"worker_id": "w", "limit": 5, "lease_seconds": 60,
                                                         "model_version_ids": None}).fetchall()
        fid, token = row[0], row[1]
        for bad, message in (("not json", "not valid JSON"), ('{"verdict": "great", "issues": []}', "verdict"),
                             ('{"verdict": "correct"}', "issues")):
            with pytest.raises(psycopg.Error, match=message):
                conn.execute(query("complete_followup"), {"followup_id": fid, "lease_token": token,
                                                          "signals": "{}", "critique": bad})
        conn.execute(query("complete_followup"), {"followup_id": fid, "lease_token": token, "signals": "{}",
                                                  "critique": '{"verdict": "incorrect", "issues": '
                                                              '[{"kind": "factual", "severity": "high", '
                                                              '"description": "x"}], "suggested_fix": "y"}'})
    with connect(db.dsn("app"), keyring=keyring) as conn:
        with pytest.raises(psycopg.Error, match="rating must be between 1 and 5"):
            conn.execute(query("rate_critique"), {"request_id": rid, "rating": 9})
        conn.execute(query("rate_critique"), {"request_id": rid, "rating": 4})
        with pytest.raises(psycopg.Error, match="no critique for request 999"):
            conn.execute(query("rate_critique"), {"request_id": 999, "rating": 4})
    with db.admin() as conn:
        assert conn.execute("SELECT verdict, n_issues, max_severity, rating FROM reflect.critiques").fetchone() == (
            "incorrect", 1, "high", 4)


def test_a_conversation_is_answered_and_followed_up_with_its_earlier_turns(db: Database, keyring: Keyring) -> None:
    _enable(db, critique=1.0, agreement_share=1.0)
    history = [{"role": "user", "content": "Remember the number 7."}, {"role": "assistant", "content": "Noted: 7."}]
    with client(db, keyring) as c:
        rid = c.submit("Which number?", params={"max_tokens": 4}, history=history)
    stats = drain(db, keyring, memory="off")
    assert stats.succeeded == 1 and stats.followups == 2  # both follow-ups read the turns (job_history_v1)
    with client(db, keyring) as c:
        row = c.get(rid)
    assert row["state"] == "succeeded" and "agreement" in row["signals"] and row["critique"]
    with psycopg.connect(db.dsn("app"), autocommit=True) as conn:
        conn.execute(query("use_key"), {"key_id": keyring.current, "key": keyring.keys[keyring.current],
                                        "current": True})
        assert conn.execute("SELECT history FROM reflect.app_requests WHERE id = %s", (rid,)).fetchone()[0] == history
        with pytest.raises(psycopg.Error, match="history must end with an assistant message"):
            conn.execute("INSERT INTO reflect.app_requests (prompt, history) VALUES ('q', %s)",
                         (json.dumps(history[:1]),))
        with pytest.raises(psycopg.Error, match=r"history\[1\] must be"):
            conn.execute("INSERT INTO reflect.app_requests (prompt, history) VALUES ('q', %s)",
                         (json.dumps([history[0], {"role": "assistant", "content": 7}]),))
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 1


def test_the_conversation_comes_between_the_memories_and_the_question() -> None:
    from pgreflect.backends import GenerationRequest

    r = GenerationRequest("q2", "sys", {}, examples=(("mq", "ma"),),
                          history=({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}))
    assert [(m["role"], m["content"]) for m in r.messages()] == [
        ("system", "sys"), ("user", "mq"), ("assistant", "ma"), ("user", "q1"), ("assistant", "a1"), ("user", "q2")]


@pytest.mark.parametrize("preempt", [True, False])
def test_a_request_does_not_wait_for_a_follow_up(db: Database, keyring: Keyring, preempt: bool) -> None:
    """One slot, busy with an agreement follow-up (4 samples of 0.4 s) when a request arrives: the request
    stops the follow-up and is answered at once; the follow-up is released (its attempt given back), keeps the
    samples it had finished and completes afterwards. Without preemption the request waits for it."""
    use_noop(db)
    _enable(db, critique=0.0, agreement_share=1.0)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '\"all\"' WHERE key = 'followups_scope'")
        conn.execute("UPDATE reflect.settings SET value = '4' WHERE key = 'agreement_samples'")
    w = worker(db, keyring, backend="noop", noop_delay_s=0.4, concurrency=1, preempt_followups=preempt)
    with BackgroundWorker(w) as bg, client(db, keyring) as c:
        first = c.submit("first")
        wait_for(lambda: db.scalar("SELECT jsonb_array_length(checkpoint -> 'texts') FROM reflect.jobs "
                                   "WHERE request_id = %s AND state = 'running'", (first,)),
                 what="the follow-up's first sample")
        _enable(db, critique=0.0, agreement_share=0.0)  # the second request gets no follow-up of its own
        second = c.submit("second")
        assert c.wait(second, timeout=30)["state"] == "succeeded"
        wait_for(lambda: db.scalar("SELECT state = 'succeeded' FROM reflect.jobs WHERE request_id = %s",
                                   (first,)), what="the follow-up")
        assert c.get(first)["signals"]["agreement"] == 1.0
    with db.admin() as conn:
        claimed, finished, attempts, resumed = conn.execute(
            "SELECT r.claimed_at, j.finished_at, j.attempts, (j.result ->> 'resumed_from')::int "
            "FROM reflect.requests r, reflect.jobs j WHERE r.id = %s AND j.request_id = %s",
            (second, first)).fetchone()
    assert bg.stats is not None
    if preempt:
        assert claimed < finished and attempts == 1 and resumed >= 1 and bg.stats.preempted == 1
    else:
        assert claimed > finished and resumed == 0 and bg.stats.preempted == 0


def test_the_agreement_is_claimed_before_the_critique(db: Database, keyring: Keyring) -> None:
    """Both follow-ups queued on one answer: the agreement (it moves the confidence) is claimed first, the
    critique (a review aid) after every other job."""
    use_noop(db)
    _enable(db, critique=1.0, agreement_share=1.0)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '\"all\"' WHERE key = 'followups_scope'")
    with client(db, keyring) as c:
        c.submit("hello")
    drain(db, keyring, backend="noop", followups=False)
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        kinds = [conn.execute(query("claim_jobs"), {"worker_id": "w", "kinds": ["critique", "agreement"], "limit": 1,
                                                    "lease_seconds": 60, "model_version_ids": None}).fetchone()[2]
                 for _ in range(2)]
    assert kinds == ["agreement", "critique"]


def test_on_a_model_that_runs_one_generation_at_a_time_a_request_stops_follow_ups_even_with_a_free_slot(
        db: Database, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two slots, one busy with a follow-up: on a llama.cpp model the request that takes the free slot would
    still wait for the follow-up's generation (one context, one lock), so it stops the follow-up too; and no
    follow-up is claimed beside a request. (The noop backend stands in for one that runs one at a time.)"""
    from pgreflect.backends.noop import NoopBackend

    monkeypatch.setattr(NoopBackend, "one_at_a_time", True, raising=False)
    use_noop(db)
    _enable(db, critique=0.0, agreement_share=1.0)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '\"all\"' WHERE key = 'followups_scope'")
        conn.execute("UPDATE reflect.settings SET value = '4' WHERE key = 'agreement_samples'")
    w = worker(db, keyring, backend="noop", noop_delay_s=0.4, concurrency=2)
    with BackgroundWorker(w) as bg, client(db, keyring) as c:
        first = c.submit("first")
        wait_for(lambda: db.scalar("SELECT state = 'running' FROM reflect.jobs WHERE request_id = %s", (first,)),
                 what="the follow-up")
        _enable(db, critique=0.0, agreement_share=0.0)
        second = c.submit("second")
        assert c.wait(second, timeout=30)["state"] == "succeeded"
        wait_for(lambda: db.scalar("SELECT state = 'succeeded' FROM reflect.jobs WHERE request_id = %s",
                                   (first,)), what="the follow-up to finish")
    with db.admin() as conn:
        answered, done, attempts, resumed = conn.execute(
            "SELECT (SELECT finished_at FROM reflect.requests WHERE id = %s), j.finished_at, j.attempts, "
            "(j.result ->> 'resumed_from')::int FROM reflect.jobs j WHERE j.request_id = %s",
            (second, first)).fetchone()
    assert bg.stats is not None and bg.stats.preempted == 1 and attempts == 1
    # The samples left were drawn after the request was answered, not beside it in the free slot.
    assert (done - answered).total_seconds() >= (4 - resumed) * 0.4 - 0.1
