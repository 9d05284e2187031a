"""The review queue in SQL (the web review page's contract): which answers people should judge, numbers only; a
reviewer reads an item's text through the audited reveal and judges it with review_v1, which records it exactly as
the app's own feedback would be (memory, training data, the label the calibrator fits on)."""

from __future__ import annotations

import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import client, drain, use_noop

REVIEWER = "pgreflect_reviewer"


def _answered(db: Database, keyring: Keyring) -> dict[str, int]:
    use_noop(db)
    with db.admin() as conn:
        conn.execute(query("ensure_login_role"), {"login": REVIEWER, "group_role": "reflect_reviewer"})
        conn.execute("UPDATE reflect.settings SET value = '0' WHERE key = 'review_sample_share'")
    with client(db, keyring) as c:
        ids = {
            "flagged": c.submit("flag me", params={"low_confidence": "flag", "confidence_threshold": 1.0}),
            "abstained": c.submit("abstain", params={"low_confidence": "abstain", "confidence_threshold": 1.0}),
            "low": c.submit("low", params={"confidence_threshold": 1.0}),
            "confident": c.submit("fine", params={"confidence_threshold": 0.0}),
        }
    drain(db, keyring, backend="noop")
    return ids


def test_the_queue_holds_the_answers_to_judge_with_their_reason_and_no_text(db: Database, keyring: Keyring) -> None:
    ids = _answered(db, keyring)
    with connect(db.cluster.dsn(user=REVIEWER, dbname=db.name), with_keys=False) as conn:
        rows = dict(conn.execute("SELECT request_id, reason FROM reflect.review_queue").fetchall())
        cols = [d.name for d in conn.execute("SELECT * FROM reflect.review_queue LIMIT 0").description]
    assert rows == {ids["flagged"]: "flagged", ids["abstained"]: "abstained", ids["low"]: "low_confidence"}
    assert not {"prompt", "answer", "correction"} & set(cols)
    with db.admin() as conn:  # the sample of confident answers
        conn.execute("UPDATE reflect.settings SET value = '1' WHERE key = 'review_sample_share'")
    with psycopg.connect(db.dsn("analyst"), autocommit=True) as conn:  # analysts see the same numbers
        assert dict(conn.execute("SELECT request_id, reason FROM reflect.review_queue").fetchall())[
            ids["confident"]] == "sampled"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT reflect.review_v1(%s, false)", (ids["low"],))


def test_a_reviewers_correction_is_recorded_as_the_apps_feedback(db: Database, keyring: Keyring) -> None:
    ids = _answered(db, keyring)
    with db.admin() as conn:  # its prompt embedding, so that the correction can become a memory
        conn.execute("INSERT INTO reflect.prompt_embeddings (request_id, model, embedding) "
                     "SELECT %s, 'test', array_fill(0.1, ARRAY[384])::vector", (ids["low"],))
    with connect(db.cluster.dsn(user=REVIEWER, dbname=db.name), keyring=keyring) as conn:
        shown = conn.execute(query("reveal_request"), {"request_id": ids["low"], "purpose": "review queue",
                                                       "redacted": True}).fetchall()
        assert shown  # the text, read through the audited path
        conn.execute("SELECT reflect.review_v1(%s, false, 'the right answer')", (ids["low"],))
        conn.execute("SELECT reflect.review_v1(%s, true)", (ids["flagged"],))
        for bad, message in [((ids["low"], None, None), "says whether the answer is correct"),
                             ((ids["low"], True, "x"), "a correct answer takes no correction"),
                             ((10**9, False, None), "no request")]:
            with pytest.raises(psycopg.Error, match=message):
                conn.execute("SELECT reflect.review_v1(%s, %s, %s)", bad)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT reflect.feedback_v1(%s, true)", (ids["low"],))  # an app's own path is not theirs
        labels = dict(conn.execute("SELECT request_id, label FROM reflect.review_queue").fetchall())
    assert labels[ids["low"]] is False and labels[ids["flagged"]] is True and labels[ids["abstained"]] is None
    row = db.scalar("SELECT jsonb_build_object('source', source, 'by', given_by) FROM reflect.feedback "
                    "WHERE request_id = %s", (ids["low"],))
    assert row == {"source": "review", "by": REVIEWER}
    assert db.scalar("SELECT count(*) FROM reflect.decryption_audit WHERE request_id = %s", (ids["low"],)) == 1
    # the app's own view and memory see the reviewer's verdict
    with client(db, keyring) as c:
        assert c.get(ids["low"])["is_correct"] is False
    assert db.scalar("SELECT jsonb_build_object('kind', kind, 'owner', owner) FROM reflect.memories "
                     "WHERE request_id = %s", (ids["low"],)) == {"kind": "correction", "owner": "pgreflect_app"}
