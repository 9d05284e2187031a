"""Signals, labels, the calibrator, memory retrieval and the analyst's calibration views."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import psycopg
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from pgreflect.db import connect
from pgreflect.errors import InvalidInput, NotFound
from pgreflect.keys import Keyring
from pgreflect.signals import format_violated, repetition_loop, rule_checks
from pgreflect.sql import query
from pgreflect.worker import WorkerConfig

from conftest import Database
from helpers import client, drain, synthetic_labelled_answers
from tiny_model import HIDDEN


# -- metrics ---------------------------------------------------------------------------------------
def test_sql_metrics_match_reference_implementations(db: Database) -> None:
    rng = np.random.default_rng(0)
    conf = np.round(rng.uniform(size=300), 2)  # rounding makes ties, which AUROC must average
    correct = rng.uniform(size=300) < conf
    with db.admin() as conn:
        auroc, ece, brier, acc80 = conn.execute(
            "SELECT reflect.auroc_v1(%(s)s, %(p)s), reflect.ece_v1(%(c)s, %(y)s), reflect.brier_v1(%(c)s, %(y)s),"
            " reflect.accuracy_at_coverage_v1(%(c)s, %(y)s, 0.8)",
            {"s": list(1 - conf), "p": list(~correct), "c": list(conf), "y": list(correct)}).fetchone()
        assert conn.execute("SELECT reflect.auroc_v1(ARRAY[0.1, 0.2], ARRAY[true, true])").fetchone()[0] is None
    assert auroc == pytest.approx(roc_auc_score(~correct, 1 - conf))
    assert brier == pytest.approx(brier_score_loss(correct, conf))
    bins = np.minimum((conf * 10).astype(int), 9)
    ref_ece = sum(abs(conf[bins == b].sum() - correct[bins == b].sum()) for b in range(10)) / len(conf)
    assert ece == pytest.approx(ref_ece)
    order = np.argsort(-conf, kind="stable")
    assert acc80 == pytest.approx(correct[order[:240]].mean(), abs=0.02)  # tie order may differ at the cut


# -- rule checks -----------------------------------------------------------------------------------
def test_rule_checks() -> None:
    assert rule_checks("q", "   ", "stop")["rule_empty"] == 1
    assert rule_checks("q", "some text", "length")["rule_truncated"] == 1
    assert repetition_loop("the cat sat on the mat " * 10)
    assert not repetition_loop("A perfectly ordinary answer that explains one thing and then stops. " * 2)
    assert rule_checks("q", "I'm sorry, but I cannot help with that.", "stop")["rule_refusal"] == 1
    assert format_violated("Answer with only the letter of the right option.", "The answer is B because")
    assert not format_violated("Answer with only the letter of the right option.", "B")
    assert format_violated("Reply with only yes or no: is 7 prime?", "Seven is prime.")
    assert not format_violated("Reply with only yes or no: is 7 prime?", "Yes.")
    assert format_violated("Respond in JSON with keys a and b.", "a is 1, b is 2")
    assert not format_violated("Respond in JSON with keys a and b.", '{"a": 1, "b": 2}')
    assert sum(rule_checks("What is 2+2?", "4", "stop").values()) == 0


# -- feedback ----------------------------------------------------------------------------------------
def _answered(db: Database, keyring: Keyring, prompt: str = "hello", **params) -> int:  # type: ignore[no-untyped-def]
    with client(db, keyring) as c:
        rid = c.submit(prompt, params={"max_tokens": 3, **params})
    drain(db, keyring, memory="off")
    return rid


def _feedback(db: Database, keyring: Keyring, request_id: int, is_correct=None, rating=None,  # type: ignore[no-untyped-def]
              correction=None, source="human", role: str = "app") -> int:
    with connect(db.dsn(role), keyring=keyring) as conn:
        try:
            return conn.execute(query("feedback"), {"request_id": request_id, "is_correct": is_correct,
                                                    "rating": rating, "correction": correction,
                                                    "source": source}).fetchone()[0]
        except psycopg.Error as exc:
            from pgreflect.errors import translate

            raise translate(exc) from None


def test_feedback_validation(db: Database, keyring: Keyring) -> None:
    rid = _answered(db, keyring)
    with client(db, keyring) as c:
        queued = c.submit("not answered yet")
    cases = [({"request_id": 999999, "is_correct": True}, NotFound, "no request 999999"),
             ({"request_id": rid, "rating": 6}, InvalidInput, "rating must be between 1 and 5"),
             ({"request_id": rid, "rating": 0}, InvalidInput, "rating must be between 1 and 5"),
             ({"request_id": rid}, InvalidInput, "needs is_correct, a rating or a correction"),
             ({"request_id": rid, "correction": "  "}, InvalidInput, "correction must not be empty"),
             ({"request_id": rid, "is_correct": True, "source": "Bad Source"}, InvalidInput, "source must match"),
             ({"request_id": queued, "is_correct": True}, InvalidInput, "has no answer to judge")]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            _feedback(db, keyring, **kwargs)
    assert db.scalar("SELECT count(*) FROM reflect.feedback") == 0
    with db.admin() as conn:
        conn.execute("SELECT reflect.ensure_login_role_v1('other_app', 'reflect_app')")
    with connect(db.cluster.dsn(user="other_app", dbname=db.name), keyring=keyring) as conn, \
            pytest.raises(psycopg.Error, match=f"no request {rid}"):
        conn.execute(query("feedback"), {"request_id": rid, "is_correct": True, "rating": None, "correction": None,
                                         "source": "human"})
    fid = _feedback(db, keyring, rid, is_correct=False, rating=2, correction="The right answer is 42.")
    enc = db.scalar("SELECT correction_enc FROM reflect.feedback WHERE id = %s", (fid,))
    assert b"42" not in bytes(enc) and b"right answer" not in bytes(enc)


def test_low_confidence_actions(db: Database, keyring: Keyring) -> None:
    flagged = _answered(db, keyring, "a", low_confidence="flag", confidence_threshold=1.0)
    abstained = _answered(db, keyring, "b", low_confidence="abstain", confidence_threshold=1.0)
    kept = _answered(db, keyring, "c", low_confidence="abstain", confidence_threshold=0.0)
    with client(db, keyring) as c:
        assert c.get(flagged)["action"] == "flag"
        assert c.get(abstained)["action"] == "abstain"
        row = c.get(kept)
        assert row["action"] == "answer" and row["calibrated"] is False
        assert c.get(abstained)["answer"] is not None  # the best guess is kept


# -- calibrator ---------------------------------------------------------------------------------------
def _answer_by_hand(db: Database, keyring: Keyring, prompt: str, answer: str, signals: dict) -> tuple[int, float]:
    """Submits a prompt and completes it as a worker would, with one token of log-prob -0.2 and these signals;
    returns the request id and the confidence the database gave it."""
    with client(db, keyring) as c:
        rid = c.submit(prompt)
    with connect(db.dsn("worker"), keyring=keyring) as conn:
        (row,) = conn.execute(query("claim"), {"worker_id": "w", "limit": 1, "lease_seconds": 60,
                                               "model_version_ids": None}).fetchall()
        conf = conn.execute(query("complete"), {
            "request_id": rid, "lease_token": row[1], "answer": answer, "finish_reason": "stop", "prompt_tokens": 3,
            "token_logprobs": [-0.2], "prompt_eval_ms": 1.0, "generation_ms": 1.0, "signals": json.dumps(signals),
        }).fetchone()[0]
    return rid, conf


def test_calibrator_recovers_a_known_relationship(db: Database, keyring: Keyring) -> None:
    synthetic_labelled_answers(db, keyring, 800, seed=1)
    with db.admin() as conn:
        cal_id = conn.execute(query("fit_calibrator"), {"model_version": "tiny"}).fetchone()[0]
        features, weights, metrics, n_train, n_heldout = conn.execute(
            "SELECT features, weights, heldout_metrics, n_train, n_heldout FROM reflect.calibrators WHERE id = %s",
            (cal_id,)).fetchone()
    assert n_train + n_heldout == 800 and 100 < n_heldout < 220
    w = dict(zip(features, weights[1:], strict=True))
    assert w["logprob_mean"] + w["logprob_min"] > 1.5  # the informative signal carries the weight
    assert abs(w["p_true"]) < 0.3  # noise gets almost none
    # Bayes-optimal AUROC on this data is ~0.86; the held-out fit should be close, and well calibrated.
    assert metrics["heldout"]["auroc_wrong"] > 0.78
    assert metrics["heldout"]["ece"] < 0.1
    # New answers now carry the calibrated confidence and say which calibrator produced it.
    rid, conf = _answer_by_hand(db, keyring, "after the fit", "a", {"p_true": 0.5})
    assert conf == pytest.approx(1 / (1 + math.exp(-3 * (-0.2 + 1.5))), abs=0.12)
    with client(db, keyring) as c:
        got = c.get(rid)
    assert got["calibrated"] is True and got["confidence"] == pytest.approx(conf)
    assert db.scalar("SELECT calibrator_id FROM reflect.answers WHERE request_id = %s", (rid,)) == cal_id


def test_refit_waits_for_enough_labels_then_for_new_ones(db: Database, keyring: Keyring) -> None:
    synthetic_labelled_answers(db, keyring, 40, seed=2)
    with db.admin() as conn:
        assert conn.execute(query("refit_calibrators")).fetchone()[0] == 0  # 40 < 50 labels
    synthetic_labelled_answers(db, keyring, 20, seed=3)
    with db.admin() as conn:
        assert conn.execute(query("refit_calibrators")).fetchone()[0] == 1
        assert conn.execute(query("refit_calibrators")).fetchone()[0] == 0  # nothing new
    synthetic_labelled_answers(db, keyring, 25, seed=4)
    with db.admin() as conn:
        assert conn.execute(query("refit_calibrators")).fetchone()[0] == 1
        assert conn.execute("SELECT count(*), count(*) FILTER (WHERE is_active) FROM reflect.calibrators"
                            ).fetchone() == (2, 1)


def test_a_refit_that_would_calibrate_worse_is_not_activated(db: Database, keyring: Keyring) -> None:
    synthetic_labelled_answers(db, keyring, 400, seed=5)
    with db.admin() as conn:
        first = conn.execute(query("fit_calibrator"), {"model_version": "tiny"}).fetchone()[0]
    # Then 600 labels that say the opposite, all on the training side: a refit learns the wrong direction,
    # and the held-out answers (unchanged) show it.
    synthetic_labelled_answers(db, keyring, 600, seed=6, slope=-3.0, training_side_only=True)
    with db.admin() as conn:
        second = conn.execute(query("fit_calibrator"), {"model_version": "tiny"}).fetchone()[0]
        active = conn.execute("SELECT id FROM reflect.calibrators WHERE is_active").fetchall()
        replaced = conn.execute("SELECT heldout_metrics -> 'replaced' FROM reflect.calibrators WHERE id = %s",
                                (second,)).fetchone()[0]
        assert conn.execute(query("refit_calibrators")).fetchone()[0] == 0  # the failed refit counts as a fit
    assert active == [(first,)]
    assert replaced["kept"] is True and replaced["calibrator_id"] == first
    assert replaced["heldout"]["brier"] < db.scalar(
        "SELECT (heldout_metrics -> 'heldout' ->> 'brier')::float8 FROM reflect.calibrators WHERE id = %s", (second,))
    assert replaced["reason"].startswith("not activated: held-out Brier")
    # A better refit does replace it, and says against what: the active one made uninformative (base rate for
    # everyone), the labels replaced by fresh ones that follow the relationship.
    with db.admin() as conn:
        conn.execute("UPDATE reflect.calibrators SET weights = array_fill(0::float8, ARRAY[cardinality(weights)]) "
                     "WHERE id = %s", (first,))
        conn.execute("DELETE FROM reflect.feedback")
    synthetic_labelled_answers(db, keyring, 300, seed=7)
    with db.admin() as conn:
        third = conn.execute(query("fit_calibrator"), {"model_version": "tiny"}).fetchone()[0]
        assert conn.execute("SELECT id FROM reflect.calibrators WHERE is_active").fetchall() == [(third,)]
        reason = conn.execute("SELECT heldout_metrics -> 'replaced' ->> 'reason' FROM reflect.calibrators "
                              "WHERE id = %s", (third,)).fetchone()[0]
    assert reason.startswith("activated: held-out Brier")


def test_a_calibrator_fitted_on_older_features_keeps_working(db: Database, keyring: Keyring) -> None:
    """Calibrators are applied to the features they were fitted with, by name: one fitted on the v1 list
    still calibrates after the list grew (v2 adds the option distribution and the kind of question)."""
    synthetic_labelled_answers(db, keyring, 300, seed=8)
    with db.admin() as conn:
        cal = conn.execute(query("fit_calibrator"), {"model_version": "tiny"}).fetchone()[0]
        v1 = conn.execute("SELECT reflect.calibration_features_v1()").fetchone()[0]
        conn.execute("UPDATE reflect.calibrators SET features = %s, feature_means = feature_means[1:8], "
                     "feature_stds = feature_stds[1:8], weights = weights[1:9] WHERE id = %s", (v1, cal))
    rid, conf = _answer_by_hand(db, keyring, "Q?\nA. x\nB. y\nAnswer with only the letter.", "A", {
        "p_true": 0.5, "option_max_prob": 0.9, "option_margin": 0.8, "option_entropy": 0.2, "kind_choice": 1.0,
        "kind_number": 0.0, "kind_long": 0.0})
    assert conf == pytest.approx(1 / (1 + math.exp(-3 * (-0.2 + 1.5))), abs=0.12)
    assert db.scalar("SELECT calibrator_id FROM reflect.answers WHERE request_id = %s", (rid,)) == cal
    values = db.scalar("SELECT reflect._feature_values_of(%s)", (rid,))
    assert values["option_max_prob"] == 0.9 and values["kind_choice"] == 1.0 and values["agreement"] is None
    v2 = db.scalar("SELECT reflect.calibration_features_v2()")
    assert v2[:8] == v1 and {"option_max_prob", "option_entropy", "kind_choice", "kind_long"} <= set(v2)


def test_analyst_calibration_views(db: Database, keyring: Keyring) -> None:
    synthetic_labelled_answers(db, keyring, 120, seed=5)
    with psycopg.connect(db.dsn("analyst"), autocommit=True) as conn:
        daily = conn.execute("SELECT labelled, accuracy, ece, brier, auroc_confidence, auroc_logprob_mean,"
                             " auroc_p_true, accuracy_at_80, abstention_rate FROM reflect.calibration_daily").fetchall()
        signals = dict(conn.execute("SELECT signal, auroc_wrong FROM reflect.signal_auroc"
                                    " WHERE model_version = 'tiny'").fetchall())
        bins = conn.execute("SELECT sum(n) FROM reflect.reliability").fetchone()[0]
        text = str(conn.execute("SELECT * FROM reflect.labelled_answers").fetchall())
    (labelled, accuracy, ece, brier, auroc_conf, auroc_lp, auroc_pt, acc80, abstain), = daily
    assert labelled == 120 and bins == 120 and 0 < accuracy < 1
    assert auroc_lp > 0.7 and 0.3 < auroc_pt < 0.7  # the informative signal and the noise
    assert set(signals) >= {"confidence", "logprob_mean", "logprob_min", "p_true", "rule_failed"}
    # signal_auroc reads each signal by name with its orientation; calibration_daily spells two of them out
    assert signals["logprob_mean"] == pytest.approx(auroc_lp) and signals["p_true"] == pytest.approx(auroc_pt)
    assert 0 <= ece <= 1 and 0 <= brier <= 1 and abstain == 0 and acc80 is not None and auroc_conf is not None
    assert "synthetic question" not in text


def test_every_signal_reported_alone_is_a_labelled_answers_column_and_in_signal_auroc(db: Database) -> None:
    """The evaluation harness reports the signals signal_orientations_v1 names; signal_auroc lists the
    labelled_answers column of each and joins the function for its orientation, so a name missing from either
    would drop the signal silently."""
    with db.admin() as conn:
        names = [r[0] for r in conn.execute("SELECT signal FROM reflect.signal_orientations_v1()")]
        columns = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = "
                                              "'reflect.labelled_answers'::regclass AND attnum > 0")}
        view = conn.execute("SELECT pg_get_viewdef('reflect.signal_auroc'::regclass)").fetchone()[0]
    listed = set(re.findall(r"\('(\w+)'::text, ?la\.(\w+)\)", view))
    assert len(names) >= 10 and set(names) <= columns, set(names) - columns
    assert listed == {(n, n) for n in names}, listed ^ {(n, n) for n in names}


# -- memory -----------------------------------------------------------------------------------------
def test_corrections_become_memories_and_similar_prompts_retrieve_them(db: Database, keyring: Keyring) -> None:
    topics = ["What is the capital city of France?", "How many legs does a spider have?",
              "Which planet is known as the red planet?"]
    ids = []
    with client(db, keyring) as c:
        for t in topics:
            ids.append(c.submit(t, params={"max_tokens": 3}))
    drain(db, keyring, memory="on")
    assert db.scalar("SELECT count(*) FROM reflect.prompt_embeddings") == 3
    _feedback(db, keyring, ids[0], is_correct=False, correction="Paris.")
    _feedback(db, keyring, ids[1], is_correct=True)
    _feedback(db, keyring, ids[2], rating=4)  # a rating alone makes no memory
    assert dict(db.admin().execute("SELECT request_id, kind FROM reflect.memories").fetchall()) == {
        ids[0]: "correction", ids[1]: "confirmed"}

    with client(db, keyring) as c:
        similar = c.submit("Tell me the capital of France.", params={"max_tokens": 3, "memory_k": 1})
        off = c.submit("Tell me the capital of France.", params={"max_tokens": 3, "memory": False})
        spider = c.submit("Number of legs on a spider?", params={"max_tokens": 3, "memory_k": 2})
        spider_any = c.submit("Number of legs on a spider?",
                              params={"max_tokens": 3, "memory_k": 2, "memory_max_distance": 2})
    drain(db, keyring, memory="on")
    with db.admin() as conn:
        used = conn.execute("SELECT request_id, memory_request_id, rank FROM reflect.answer_memories"
                            " ORDER BY request_id, rank").fetchall()
    assert (similar, ids[0], 1) in used
    assert [u for u in used if u[0] == off] == []
    # The unrelated France memory is beyond memory_max_distance: only the spider one comes back ...
    assert [u[1] for u in used if u[0] == spider] == [ids[1]]
    # ... unless the request lifts the cutoff; then both, nearest first.
    assert [u[1] for u in used if u[0] == spider_any] == [ids[1], ids[0]]
    with db.admin() as conn:
        distances = dict(conn.execute("SELECT memory_request_id, distance FROM reflect.answer_memories"
                                      " WHERE request_id = %s", (spider_any,)).fetchall())
    assert distances[ids[1]] <= 0.38 < distances[ids[0]]
    with client(db, keyring) as c:
        assert c.get(similar)["memory_used"] is True and c.get(off)["memory_used"] is False
    # A later "wrong" verdict without a correction withdraws the confirmed memory.
    _feedback(db, keyring, ids[1], is_correct=False)
    assert db.scalar("SELECT count(*) FROM reflect.memories WHERE request_id = %s", (ids[1],)) == 0


def test_p_true_waits_for_long_answers(db: Database, keyring: Keyring) -> None:
    """The worker asks P(True) only after answers of at least p_true_min_tokens tokens (128 by default): a short
    answer carries none and its uncalibrated confidence falls back to the token probabilities."""
    assert WorkerConfig().p_true_min_tokens == 128
    with client(db, keyring) as c:
        ids = [c.submit(f"Tell me about {topic}.", params={"max_tokens": n, "temperature": 0})
               for topic, n in (("cats", 3), ("dogs", 4), ("rivers", 40), ("mountains", 40))]
    drain(db, keyring, memory="off", p_true_min_tokens=10)
    with db.admin() as conn:
        rows = conn.execute("SELECT a.request_id, a.completion_tokens, EXISTS (SELECT 1 FROM reflect.answer_signals s "
                            "WHERE s.request_id = a.request_id AND s.name = 'p_true') FROM reflect.answers a "
                            "WHERE a.request_id = ANY(%s) ORDER BY a.request_id", (ids,)).fetchall()
    assert [has for _, _, has in rows] == [n >= 10 for _, n, _ in rows]
    assert {n >= 10 for _, n, _ in rows} == {True, False}, rows  # both sides of the threshold were exercised
    short = rows[0][0]
    with db.admin() as conn:
        mean = conn.execute("SELECT logprob_mean FROM reflect.answers WHERE request_id = %s", (short,)).fetchone()[0]
    with client(db, keyring) as c:
        assert c.get(short)["confidence"] == pytest.approx(math.exp(mean))


def test_p_true_is_measured_for_llama_answers(db: Database, keyring: Keyring) -> None:
    rid = _answered(db, keyring, "Is the sky blue? Reply with only yes or no.")
    with db.admin() as conn:
        signals = dict(conn.execute("SELECT name, value FROM reflect.answer_signals WHERE request_id = %s",
                                    (rid,)).fetchall())
    assert 0 <= signals["p_true"] <= 1
    assert {"rule_empty", "rule_truncated", "rule_repetition", "rule_refusal", "rule_format"} <= set(signals)
    with client(db, keyring) as c:
        assert c.get(rid)["confidence"] == pytest.approx(signals["p_true"])  # the uncalibrated default
    # the answer's final-layer hidden state is stored for the probe, the size of the model's embedding
    with db.admin() as conn:
        dims, version = conn.execute(
            "SELECT public.vector_dims(s.state), mv.name FROM reflect.answer_states s "
            "JOIN reflect.model_versions mv ON mv.id = s.model_version_id WHERE s.request_id = %s", (rid,)).fetchone()
    assert version == "tiny" and dims == HIDDEN


def test_reanswer_with_evidence_keeps_the_more_confident_attempt(db: Database, keyring: Keyring) -> None:
    with client(db, keyring) as c:
        memory_id = c.submit("What is the capital city of Australia?", params={"max_tokens": 3})
    drain(db, keyring, memory="on")
    _feedback(db, keyring, memory_id, is_correct=False, correction="Canberra.")
    with client(db, keyring) as c:
        rid = c.submit("Which city is the capital of Australia?",
                       params={"max_tokens": 3, "low_confidence": "reanswer", "confidence_threshold": 1.0,
                               "memory": False})
        plain = c.submit("Which city is the capital of Australia?",
                         params={"max_tokens": 3, "low_confidence": "reanswer", "confidence_threshold": 0.0})
    drain(db, keyring, memory="on")
    with db.admin() as conn:
        cands = conn.execute("SELECT n, confidence, evidence_request_ids, chosen FROM reflect.answer_candidates"
                             " WHERE request_id = %s ORDER BY n", (rid,)).fetchall()
        action, conf = conn.execute("SELECT action, confidence FROM reflect.answers WHERE request_id = %s",
                                    (rid,)).fetchone()
        plain_cands = conn.execute("SELECT count(*) FROM reflect.answer_candidates WHERE request_id = %s",
                                   (plain,)).fetchone()[0]
    assert [c[0] for c in cands] == [1, 2]  # both attempts are stored
    assert cands[0][2] == [] and memory_id in cands[1][2]  # the second used the correction as evidence
    best = max(cands, key=lambda c: (c[1], -c[0]))
    assert [c[3] for c in cands] == [c is best for c in cands]
    assert action == "reanswer" and conf == pytest.approx(best[1])
    assert plain_cands == 1  # confident enough: no second attempt


def test_p_answer_reads_the_probability_of_the_answer_span() -> None:
    from pgreflect.signals import answer_span, p_answer

    assert answer_span("The correct answer is D. Aurign") == (22, 23)
    assert answer_span("(B) because") == (1, 2)
    assert answer_span("So she makes 9 * 2 = 18 dollars.\n18") == (33, 35)
    assert answer_span(" ".join(["word"] * 12)) is None
    worked = "The date is 11/12/2002, option C.\n\nTherefore, the correct answer is \\boxed{B}."
    assert worked[slice(*answer_span(worked))] == "B"  # the boxed pick, not option C or the date's numbers
    assert "The answer is: **A**"[slice(*answer_span("The answer is: **A**"))] == "A"
    texts, lps = ["The", " answer", " is", " D", "."], [-0.1, -0.2, -0.1, -0.7, -0.3]
    assert p_answer(texts, lps, "The answer is D.") == pytest.approx(math.exp(-0.7))
    assert p_answer(["1", "8"], [-0.2, -0.3], "18") == pytest.approx(math.exp(-0.5))
    assert p_answer(["x"], [-0.1], "mismatch") is None  # token texts that do not spell the answer
