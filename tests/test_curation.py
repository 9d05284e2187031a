"""Curation in the database: training sets from corrections and confirmed answers, near-duplicates merged,
evaluation items kept out (leakage), snapshots frozen as ciphertext, one owner's history only, and the
fine-tune job queued on demand or when enough new corrections exist."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import psycopg
import pytest

from pgreflect.db import connect
from pgreflect.keys import Keyring
from pgreflect.sql import query

from conftest import Database
from helpers import SECOND_APP, answer_with_embedding, second_app, use_noop


def _near(seed: int, of: int, scale: float) -> str:
    """A unit vector close to unit_vector(of) (cosine ~0.99 at scale 0.01, ~0.5 at scale 0.1)."""
    base = np.random.default_rng(of).normal(size=384)
    base /= np.linalg.norm(base)
    v = base + np.random.default_rng(seed).normal(scale=scale, size=384)
    return "[" + ",".join(f"{x:.6f}" for x in v / np.linalg.norm(v)) + "]"


def _label(db: Database, keyring: Keyring, request_id: int, *, correct: bool, correction: str | None = None,
           dsn: str | None = None) -> None:
    with connect(dsn or db.dsn("app"), keyring=keyring) as conn:
        conn.execute(query("feedback"), {"request_id": request_id, "is_correct": correct, "rating": None,
                                         "correction": correction, "source": "human"})


def _history(db: Database, keyring: Keyring) -> dict[str, int]:
    """One app's labelled history, with each case curation must handle."""
    use_noop(db)
    app = db.dsn("app")
    ids: dict[str, int] = {}
    ids["corrected"], _ = answer_with_embedding(db, keyring, app, "What is the capital of Australia?",
                                                _near(1, 100, 0.1))
    _label(db, keyring, ids["corrected"], correct=False, correction="Canberra.")
    ids["confirmed"], _ = answer_with_embedding(db, keyring, app, "What is 2 + 2?", _near(2, 200, 0.1))
    _label(db, keyring, ids["confirmed"], correct=True)
    ids["wrong_only"], _ = answer_with_embedding(db, keyring, app, "Name a prime.", _near(3, 300, 0.1))
    _label(db, keyring, ids["wrong_only"], correct=False)  # wrong, no correction: nothing to learn from
    # Two near-duplicate prompts (cosine ~0.997), both corrected: merged, the newer correction kept.
    ids["dupe_old"], _ = answer_with_embedding(db, keyring, app, "Capital of Canada?", _near(4, 400, 0.003))
    _label(db, keyring, ids["dupe_old"], correct=False, correction="Toronto.")
    ids["dupe_new"], _ = answer_with_embedding(db, keyring, app, "What's the capital of Canada?", _near(5, 400, 0.003))
    _label(db, keyring, ids["dupe_new"], correct=False, correction="Ottawa.")
    # Two templated prompts that differ in a number (cosine ~0.96, like few-shot blocks): different items, both kept.
    ids["template_a"], _ = answer_with_embedding(db, keyring, app, "Rule: 2 + 2 -> 5. 3 + 4 ->", _near(9, 900, 0.01))
    _label(db, keyring, ids["template_a"], correct=False, correction="8")
    ids["template_b"], _ = answer_with_embedding(db, keyring, app, "Rule: 2 + 2 -> 5. 6 + 1 ->", _near(10, 900, 0.01))
    _label(db, keyring, ids["template_b"], correct=False, correction="8")
    # An evaluation item, and a corrected request that is a near-duplicate of it: both kept out.
    ids["eval"], _ = answer_with_embedding(db, keyring, app, "Eval: largest planet?", _near(6, 600, 0.01))
    with connect(app, keyring=keyring) as conn:
        conn.execute(query("tag_eval_request"), {"request_id": ids["eval"], "dataset": "mmlu", "item_id": "x1",
                                                 "run_label": "r"})
    _label(db, keyring, ids["eval"], correct=False, correction="Jupiter.")
    ids["leak"], _ = answer_with_embedding(db, keyring, app, "Which planet is largest?", _near(7, 600, 0.01))
    _label(db, keyring, ids["leak"], correct=False, correction="Jupiter.")
    # Another app's correction: never in this app's set.
    ids["other_app"], _ = answer_with_embedding(db, keyring, second_app(db), "Other app's question",
                                                _near(8, 800, 0.1))
    _label(db, keyring, ids["other_app"], correct=False, correction="Other app's answer.",
           dsn=db.cluster.dsn(user=SECOND_APP, dbname=db.name))
    return ids


def test_a_training_set_is_curated_in_the_database(db: Database, keyring: Keyring) -> None:
    ids = _history(db, keyring)
    with connect(db.dsn(), keyring=keyring) as conn:
        set_id = conn.execute("SELECT reflect.curate_training_set_v1('pgreflect_app', 'noop')").fetchone()[0]
        summary = conn.execute(query("training_set"), {"id": set_id}).fetchone()
        examples = conn.execute("""
            SELECT request_id, source, split, reflect._decrypt(prompt_enc, key_id),
                   reflect._decrypt(completion_enc, key_id)
            FROM reflect.training_examples WHERE training_set_id = %s ORDER BY request_id""", (set_id,)).fetchall()
    got = {r[0]: (r[1], r[3], r[4]) for r in examples}
    assert got == {
        ids["corrected"]: ("correction", "What is the capital of Australia?", "Canberra."),
        ids["confirmed"]: ("confirmed", "What is 2 + 2?", "answer to What is 2 + 2?"),  # the confirmed answer
        ids["dupe_new"]: ("correction", "What's the capital of Canada?", "Ottawa."),
        ids["template_a"]: ("correction", "Rule: 2 + 2 -> 5. 3 + 4 ->", "8"),
        ids["template_b"]: ("correction", "Rule: 2 + 2 -> 5. 6 + 1 ->", "8"),
    }
    cols = [d.name for d in db.admin().execute("SELECT * FROM reflect.training_set_summary LIMIT 0").description]
    s = dict(zip(cols, summary, strict=True))
    assert (s["n_candidates"], s["n_corrections"], s["n_confirmed"]) == (7, 4, 1)  # eval request never a candidate
    assert (s["n_duplicates_merged"], s["n_excluded_leakage"], s["n_excluded_no_embedding"]) == (1, 1, 0)
    assert s["n_train"] + s["n_heldout"] == 5 and len(s["content_hash"]) == 64
    with db.admin() as conn:  # the split is the stable hash's
        for request_id, _source, split, *_ in examples:
            share = conn.execute("SELECT reflect._heldout(%s, 0.2)", (request_id,)).fetchone()[0]
            assert split == ("heldout" if share else "train")


def test_a_snapshot_does_not_change_when_its_sources_do(db: Database, keyring: Keyring) -> None:
    ids = _history(db, keyring)
    with connect(db.dsn(), keyring=keyring) as conn:
        set_id = conn.execute("SELECT reflect.curate_training_set_v1('pgreflect_app', 'noop')").fetchone()[0]
    _label(db, keyring, ids["corrected"], correct=False, correction="Sydney.")  # a later (wrong) correction
    with connect(db.dsn(), keyring=keyring) as conn:
        frozen = conn.execute("""SELECT reflect._decrypt(completion_enc, key_id) FROM reflect.training_examples
                                 WHERE training_set_id = %s AND request_id = %s""",
                              (set_id, ids["corrected"])).fetchone()
        again = conn.execute("SELECT reflect.curate_training_set_v1('pgreflect_app', 'noop')").fetchone()[0]
        hashes = [r[0] for r in conn.execute("SELECT content_hash FROM reflect.training_sets ORDER BY id")]
    assert frozen == ("Canberra.",) and again != set_id and hashes[0] != hashes[1]


def test_nothing_to_train_on_is_a_clear_error(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with connect(db.dsn(), keyring=keyring) as conn:
        with pytest.raises(psycopg.Error, match="nothing to train on for pgreflect_app: 0 labelled request"):
            conn.execute("SELECT reflect.curate_training_set_v1('pgreflect_app', 'noop')")
        with pytest.raises(psycopg.Error, match='no login named "nobody_here"'):
            conn.execute("SELECT reflect.curate_training_set_v1('nobody_here')")
    assert db.scalar("SELECT count(*) FROM reflect.training_sets") == 0


def test_enough_new_corrections_queue_a_fine_tune_once(db: Database, keyring: Keyring) -> None:
    use_noop(db)
    with db.admin() as conn:
        conn.execute("UPDATE reflect.settings SET value = '2' WHERE key = 'finetune_min_new_corrections'")
    app = db.dsn("app")
    first, _ = answer_with_embedding(db, keyring, app, "q one", _near(1, 1, 0.1))
    _label(db, keyring, first, correct=False, correction="a one")
    with db.admin() as conn:
        assert conn.execute(query("finetune_when_ready")).fetchone()[0] == 0  # 1 < 2 new corrections
    second, _ = answer_with_embedding(db, keyring, app, "q two", _near(2, 2, 0.1))
    _label(db, keyring, second, correct=False, correction="a two")
    with psycopg.connect(db.dsn("worker"), autocommit=True) as listener:
        listener.execute("LISTEN needs_finetune")
        with db.admin() as conn:
            assert conn.execute(query("finetune_when_ready")).fetchone()[0] == 1
            assert conn.execute(query("finetune_when_ready")).fetchone()[0] == 0  # one is already queued
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    with db.admin() as conn:
        job_id, payload, mv = conn.execute("SELECT id, payload, model_version_id FROM reflect.jobs "
                                           "WHERE kind = 'finetune'").fetchone()
        active = conn.execute("SELECT id FROM reflect.model_versions WHERE is_active").fetchone()[0]
    assert payloads == [str(job_id)]  # the id only
    assert payload["owner"] == "pgreflect_app" and mv == active


def test_improve_run_and_status_from_the_cli(db: Database, keyring: Keyring) -> None:
    _history(db, keyring)
    env = db.env(keyring)
    run = subprocess.run([sys.executable, "-m", "pgreflect.cli", "improve", "run", "--login", "pgreflect_app",
                          "--model-version", "noop", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["job"]["kind"] == "finetune" and out["job"]["state"] == "queued"
    assert out["training_set"]["n_train"] + out["training_set"]["n_heldout"] == 5
    status = subprocess.run([sys.executable, "-m", "pgreflect.cli", "improve", "status"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert f"fine-tune job {out['job']['id']}: queued" in status.stdout
    nothing = subprocess.run([sys.executable, "-m", "pgreflect.cli", "improve", "run", "--login", "pgreflect_analyst",
                              "--model-version", "noop"], env=env, capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2 and "nothing to train on" in nothing.stderr
