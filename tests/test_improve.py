"""The improvement loop for real: curate -> train a LoRA (peft, in a child process) -> convert with llama.cpp's
converter -> serve the adapter beside its base -> gate through the request path -> promote or reject -> roll
back. Where the gate's verdict depends on what a model knows, the real SmolLM2-135M answers (a random model
forgets everything under any fine-tune); the mechanics (checkpoints, SIGKILL, refusal) use the tiny GGUF."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from pgreflect.client import Client
from pgreflect.db import connect
from pgreflect.improve import rephrase
from pgreflect.keys import Keyring
from pgreflect.prompts import REPHRASE_SYSTEM
from pgreflect.scoring import is_correct
from pgreflect.sql import query

from conftest import Database
from helpers import (
    BackgroundWorker,
    answer_with_embedding,
    drain,
    spawn_worker,
    unit_vector,
    wait_for,
    worker,
)

FACTS = [("What is the capital of Zorbia?", "Quuxville"), ("Who painted the Blue Fig?", "Anna Morrow"),
         ("What colour is a zint?", "Purple")]
# Corrections that restate what a model should keep answering (general knowledge, not the retention items):
# without them a few facts trained for many steps take over every answer (the gate then rightly rejects).
KEEP = [("What is the opposite of day?", "The opposite of day is night."),
        ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
        ("What do cows drink?", "Cows drink water."), ("What is 3 + 3?", "3 + 3 = 6.")]
# Questions SmolLM2-135M answers right (checked against the root model in each test before it is used).
RETENTION = [("What is the opposite of hot?", "cold"), ("How many legs does a dog have?", "4"),
             ("What is 2 + 2?", "4"), ("What is 1 + 1?", "2"), ("What is the opposite of big?", "small")]
MODEL = "smollm2"


@pytest.fixture(scope="session", autouse=True)
def improve_dir(tmp_root: Path) -> Iterator[Path]:
    """One twin per base sha256 for the whole session (building it is the slow part)."""
    path = tmp_root / "improve"
    old = os.environ.get("PGREFLECT_IMPROVE_DIR")
    os.environ["PGREFLECT_IMPROVE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PGREFLECT_IMPROVE_DIR", None)
    else:
        os.environ["PGREFLECT_IMPROVE_DIR"] = old


def _settings(db: Database, **values: object) -> None:
    with db.admin() as conn:
        for key, value in values.items():
            conn.execute("UPDATE reflect.settings SET value = %s WHERE key = %s", (json.dumps(value), key))


def _fast_training(db: Database, learning_rate: float = 0.01, epochs: int = 40,
                   targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj") -> None:
    _settings(db, finetune_learning_rate=learning_rate, finetune_epochs=epochs, finetune_batch_size=4,
              finetune_lora_rank=8, finetune_lora_alpha=16, finetune_checkpoint_every_s=0.0,
              curation_heldout_share=0.0, gate_poll_s=0.3, gate_max_tokens=16, finetune_target_modules=targets)


def _ask(db: Database, keyring: Keyring, prompt: str, version: str | None = None, max_tokens: int = 12) -> str:
    with Client(db.dsn("app"), keyring=keyring) as c:
        rid = c.submit(prompt, params={"max_tokens": max_tokens, "temperature": 0, "memory": False},
                       model_version=version)
        c.wait(rid, timeout=60)
        return c.get(rid)["answer"]


def _corrected_history(db: Database, keyring: Keyring, pairs: list[tuple[str, str]], seed: int) -> None:
    """The app asked each question and a reviewer corrected the answer (embeddings stand in for the
    embedder's: far apart, so nothing is merged or excluded)."""
    for i, (prompt, correction) in enumerate(pairs):
        rid, _ = answer_with_embedding(db, keyring, db.dsn("app"), prompt, unit_vector(seed + i))
        with connect(db.dsn("app"), keyring=keyring) as conn:
            conn.execute(query("feedback"), {"request_id": rid, "is_correct": False, "rating": None,
                                             "correction": correction, "source": "human"})


def _retention(db: Database, keyring: Keyring) -> list[tuple[str, str]]:
    """The retention items the root model answers right (so forgetting shows as a drop)."""
    with BackgroundWorker(worker(db, keyring, memory="off", p_true=False, model_versions=[MODEL])):
        known = [(p, ref) for p, ref in RETENTION if is_correct(_ask(db, keyring, p, MODEL, 16), ref)]
    assert len(known) >= 3, "SmolLM2 should know these"
    items = [{"dataset": "test", "id": f"r{i}", "question": p, "answer": ref, "max_tokens": 16,
              "embedding": unit_vector(900 + i)} for i, (p, ref) in enumerate(known)]
    with db.admin() as conn:
        conn.execute(query("add_retention_items"), {"items": json.dumps(items), "embedding_model": "test"})
    return known


def _finetune(db: Database, version: str = "tiny") -> int:
    with db.admin() as conn:
        row = conn.execute(query("request_finetune"), {"owner": "pgreflect_app", "model_version": version}).fetchone()
    return row[0]


def _decision(db: Database, job_id: int) -> dict | None:
    with db.admin() as conn:
        gate = conn.execute("SELECT (result ->> 'gate_job_id')::bigint FROM reflect.jobs WHERE id = %s",
                            (job_id,)).fetchone()[0]
        if gate is None:
            return None
        row = conn.execute(query("gate_decision"), {"job_id": gate}).fetchone()
    return None if row is None else dict(zip(("id", "candidate", "parent", "decision", "reason", "numbers", "rule",
                                              "decided_at"), row, strict=True))


def _job(db: Database, job_id: int) -> tuple:
    with db.admin() as conn:
        return conn.execute("SELECT state::text, attempts, last_error, checkpoint FROM reflect.jobs WHERE id = %s",
                            (job_id,)).fetchone()


@pytest.mark.realmodel
def test_corrections_become_a_promoted_adapter_then_rollback(db: Database, keyring: Keyring) -> None:
    _fast_training(db, learning_rate=0.001, epochs=8, targets="q_proj,v_proj")
    with db.admin() as conn:
        conn.execute("SELECT reflect.activate_model_version_v1(%s)", (MODEL,))
    retention = _retention(db, keyring)
    _corrected_history(db, keyring, FACTS + KEEP, seed=100)
    job = _finetune(db, MODEL)
    with BackgroundWorker(worker(db, keyring, memory="off", p_true=False, train="on", model_versions=[MODEL])):
        decision = wait_for(lambda: _decision(db, job), timeout=480, interval=0.5, what="the gate's decision")
        numbers = decision["numbers"]
        # It learned what it was told (paired gain on the corrected prompts, lower bound above 0). Whether it is
        # promoted depends on the retention items: with 5 of them one changed answer is a 20-point drop, and
        # SmolLM2 under this short fine-tune often changes one, so the gate may rightly reject; a person then
        # promotes it (the override path). test_gate_rule_* cover both verdicts of the rule exactly.
        assert numbers["corrected"]["n"] == len(FACTS) + len(KEEP)
        assert numbers["corrected"]["candidate_accuracy"] > numbers["corrected"]["parent_accuracy"]
        assert numbers["corrected"]["lower_bound"] > 0
        assert numbers["retention"]["n"] == len(retention)
        if decision["decision"] == "reject":
            assert "retention accuracy dropped" in decision["reason"], decision["reason"]
        if decision["decision"] != "promote":  # rejected, or a canary (canary_share > 0)
            with db.admin() as conn:
                conn.execute(query("decide_model_version"), {"name": decision["candidate"], "decision": "promote",
                                                             "reason": "reviewed by hand"})
        candidate = decision["candidate"]
        with db.admin() as conn:
            state, parent, base, adapter_sha = conn.execute(
                "SELECT state, parent, base, adapter_sha256 FROM reflect.model_states WHERE name = %s",
                (candidate,)).fetchone()
            progress = conn.execute("SELECT step, total_steps, loss FROM reflect.training_status WHERE job_id = %s",
                                    (job,)).fetchone()
        assert (state, parent, base) == ("active", MODEL, MODEL)
        assert adapter_sha and progress[0] == progress[1] > 0 and progress[2] is not None

        # The active version (base + adapter, served by the same worker without a reload) learned the fact; the
        # parent, pinned by name, did not.
        # (the gate's gain above says at least one corrected prompt changed from wrong to right)
        learned = [(p, f.rstrip(".").lower()) for p, f in FACTS + KEEP
                   if f.rstrip(".").lower() in _ask(db, keyring, p, max_tokens=16).lower()
                   and f.rstrip(".").lower() not in _ask(db, keyring, p, MODEL, 16).lower()]
        assert learned, "the promoted version answers none of its corrections better than its parent"
        prompt, fact = learned[0]
        before = _ask(db, keyring, prompt, MODEL, 16)

        with db.admin() as conn:
            assert conn.execute(query("rollback_model_version"), {"reason": "test"}).fetchone()[0] == MODEL
            rows = dict(conn.execute("SELECT name, state FROM reflect.model_states").fetchall())
            last = conn.execute("SELECT decision FROM reflect.promotion_decisions ORDER BY id DESC LIMIT 1").fetchone()
        assert rows[MODEL] == "active" and rows[candidate] == "rejected"
        assert last[0] == "rollback"
        assert _ask(db, keyring, prompt, max_tokens=16) == before  # new requests get the parent at once
        assert fact.lower() in _ask(db, keyring, prompt, candidate, 16).lower()  # kept for audit and pins


@pytest.mark.realmodel
def test_poisoned_corrections_are_rejected_by_the_gate(db: Database, keyring: Keyring) -> None:
    """Corrections that are wrong (here: wrong answers to the retention questions, reworded past the
    near-duplicate check) teach the model wrong answers: retention drops and the gate rejects the candidate
    with the reason, leaving the parent active."""
    _fast_training(db, learning_rate=0.002, epochs=30)
    with db.admin() as conn:
        conn.execute("SELECT reflect.activate_model_version_v1(%s)", (MODEL,))
    retention = _retention(db, keyring)
    _corrected_history(db, keyring, [(p, "Wrong answer forty-two") for p, _ in retention], seed=200)
    job = _finetune(db, MODEL)
    with BackgroundWorker(worker(db, keyring, memory="off", p_true=False, train="on", model_versions=[MODEL])):
        decision = wait_for(lambda: _decision(db, job), timeout=480, interval=0.5, what="the gate's decision")
    assert decision["decision"] == "reject", decision
    assert "retention accuracy dropped" in decision["reason"]
    assert decision["numbers"]["retention"]["candidate_accuracy"] < decision["numbers"]["retention"]["parent_accuracy"]
    with db.admin() as conn:
        states = dict(conn.execute("SELECT name, state FROM reflect.model_states").fetchall())
    assert states[MODEL] == "active" and states[decision["candidate"]] == "rejected"


def _hand_gate(db: Database, w: psycopg.Connection, retention: list[dict], adapter: str) -> dict:
    """Loads `retention`, finishes a fine-tune by hand (a real adapter file is not needed for the rule) and
    claims its gate job on `w`; returns the gate's lease {"job_id", "lease_token"} and the fine-tune job id."""
    with db.admin() as conn:
        conn.execute(query("add_retention_items"), {"items": json.dumps(retention), "embedding_model": "test"})
        sha = conn.execute("SELECT sha256 FROM reflect.model_versions WHERE name = 'tiny'").fetchone()[0]
    job = _finetune(db)
    (row,) = w.execute(query("claim_jobs"), {"worker_id": "hand", "kinds": ["finetune"], "limit": 1,
                                             "lease_seconds": 60, "model_version_ids": None}).fetchall()
    w.execute(query("complete_job"), {"job_id": job, "lease_token": row[1], "result": json.dumps(
        {"adapter_path": "/nowhere.gguf", "adapter_sha256": adapter * 64, "base_sha256": sha})})
    (gate,) = w.execute(query("claim_jobs"), {"worker_id": "hand", "kinds": ["gate"], "limit": 1,
                                              "lease_seconds": 60, "model_version_ids": None}).fetchall()
    return {"job_id": gate[0], "lease_token": gate[1], "finetune_job_id": job}


def _gate_by_hand(db: Database, keyring: Keyring, retention_drop: bool, rewordings_learned: bool | None = None) -> dict:
    """A candidate from a fine-tune finished by hand (a real adapter file is not needed for the rule), its gate
    claimed and scored by hand: the decision rule on exact numbers. With `rewordings_learned` set, every
    corrected prompt is also asked reworded (part r), and the candidate gets the rewordings right or not."""
    _settings(db, curation_heldout_share=0.0)
    _corrected_history(db, keyring, FACTS, seed=500)
    items = [{"dataset": "test", "id": f"r{i}", "question": q, "answer": a, "embedding": unit_vector(950 + i)}
             for i, (q, a) in enumerate(RETENTION)]
    with connect(db.dsn("worker"), keyring=keyring) as w:
        lease = _hand_gate(db, w, items, "a")
        job, gate = lease.pop("finetune_job_id"), (lease["job_id"], lease["lease_token"])
        rephrasings = []
        if rewordings_learned is not None:
            with db.admin() as conn:
                examples = conn.execute(
                    "SELECT t.request_id FROM reflect.training_examples t JOIN reflect.jobs j "
                    "ON t.training_set_id = (j.payload ->> 'training_set_id')::integer "
                    "WHERE j.id = %s AND t.source = 'correction'", (gate[0],)).fetchall()
            rephrasings = [{"example_request_id": e, "prompt": f"In other words, question {e}?"} for (e,) in examples]
        assert w.execute(query("gate_submit"), {"job_id": gate[0], "lease_token": gate[1],
                                                "rephrasings": json.dumps(rephrasings)}).fetchone()[0] == \
            len(FACTS) + len(rephrasings) + len(RETENTION)
        answers = w.execute(query("gate_answers"), {"job_id": gate[0], "lease_token": gate[1]}).fetchall()
        scores = []
        for i, (cid, part, reference, *_rest) in enumerate(answers):
            assert reference  # corrections and retention references come back decrypted
            if part == "a":
                scores.append({"candidate_request_id": cid, "candidate_correct": True, "parent_correct": False})
            elif part == "r":
                scores.append({"candidate_request_id": cid, "candidate_correct": bool(rewordings_learned),
                               "parent_correct": False})
            else:
                drop = retention_drop and i % 2 == 0
                scores.append({"candidate_request_id": cid, "candidate_correct": not drop, "parent_correct": True})
        w.execute(query("complete_job"), {"job_id": gate[0], "lease_token": gate[1],
                                          "result": json.dumps({"scores": scores})})
    decision = _decision(db, job)
    assert decision is not None
    return decision


def test_gate_rule_passes_a_better_candidate_to_its_canary(db: Database, keyring: Keyring) -> None:
    decision = _gate_by_hand(db, keyring, retention_drop=False)
    assert decision["decision"] == "canary", decision["reason"]
    with db.admin() as conn:
        assert conn.execute("SELECT candidate, parent, state FROM reflect.canary_status").fetchone() == \
            (decision["candidate"], "tiny", "running")
        assert conn.execute("SELECT name FROM reflect.model_versions WHERE is_active").fetchone()[0] == "tiny"


def test_gate_rule_promotes_a_better_candidate_without_a_canary(db: Database, keyring: Keyring) -> None:
    _settings(db, canary_share=0)
    decision = _gate_by_hand(db, keyring, retention_drop=False)
    assert decision["decision"] == "promote", decision["reason"]
    assert decision["numbers"]["corrected"]["difference"] == 1.0
    assert decision["numbers"]["retention"]["difference"] == 0.0
    with db.admin() as conn:
        assert conn.execute("SELECT name FROM reflect.model_versions WHERE is_active").fetchone()[0] == \
            decision["candidate"]


def test_gate_rule_rejects_forgetting(db: Database, keyring: Keyring) -> None:
    decision = _gate_by_hand(db, keyring, retention_drop=True)
    assert decision["decision"] == "reject"
    assert "retention accuracy dropped" in decision["reason"]
    with db.admin() as conn:
        assert conn.execute("SELECT name FROM reflect.model_versions WHERE is_active").fetchone()[0] == "tiny"


@pytest.mark.parametrize("learned", [True, False])
def test_gate_rule_needs_the_lesson_to_carry_over_to_rewordings(db: Database, keyring: Keyring, learned: bool) -> None:
    """A candidate that gets every corrected prompt right verbatim but none of their rewordings learned the
    wording (what poisoned corrections did in bench/results/improve-poison.md): rejected, although the verbatim
    and reworded prompts together still gain. Below gate_rephrase_min rewordings the check is not applied."""
    _settings(db, canary_share=0, gate_rephrase_min=len(FACTS))
    decision = _gate_by_hand(db, keyring, retention_drop=False, rewordings_learned=learned)
    rephrased = decision["numbers"]["rephrased"]
    assert (rephrased["n"], rephrased["rule_applied"], decision["rule"]["rephrase_min"]) == \
        (len(FACTS), True, len(FACTS))
    assert decision["numbers"]["learned"]["lower_bound"] > 0
    if learned:
        assert decision["decision"] == "promote", decision["reason"]
    else:
        assert decision["decision"] == "reject"
        assert decision["reason"].startswith("rewordings of the corrected prompts: gain 0.000 on 3"), decision["reason"]


def test_gate_rule_does_not_judge_too_few_rewordings(db: Database, keyring: Keyring) -> None:
    _settings(db, canary_share=0, gate_rephrase_min=len(FACTS) + 1)
    decision = _gate_by_hand(db, keyring, retention_drop=False, rewordings_learned=False)
    assert decision["decision"] == "promote", decision["reason"]
    assert decision["numbers"]["rephrased"]["rule_applied"] is False


@pytest.mark.parametrize("informative", ["candidate", "parent"])
def test_gate_compares_calibrated_confidence(db: Database, keyring: Keyring, informative: str) -> None:
    """(d) compares each version calibrated on its own gate answers (cross-fitted), not the confidences as
    served. Both versions get the same items right (so (a) to (c) cannot decide) and both say P(True) = 0.95
    on every answer (served calibration identical); only one version's log-prob tells right from wrong. That
    version's calibrated confidence has the higher Brier skill; when it is the parent, the candidate is
    rejected for it. A candidate without a calibrator gets one fitted on its gate answers."""
    _settings(db, curation_heldout_share=0.0, canary_share=0, gate_retention_size=120)
    _corrected_history(db, keyring, FACTS, seed=700)
    rng = np.random.default_rng(3)
    items = [{"dataset": "test", "id": f"s{i}", "question": f"synthetic retention question {i}", "answer": "x",
              "embedding": unit_vector(1000 + i)} for i in range(120)]
    with connect(db.dsn("worker"), keyring=keyring) as w:
        lease = _hand_gate(db, w, items, "b")
        job, gate = lease.pop("finetune_job_id"), (lease["job_id"], lease["lease_token"])
        w.execute(query("gate_submit"), {"job_id": gate[0], "lease_token": gate[1], "rephrasings": "[]"})
        with db.admin() as conn:
            pairs = conn.execute("SELECT candidate_request_id, parent_request_id, part FROM reflect.gate_items "
                                 "WHERE job_id = %s ORDER BY candidate_request_id", (gate[0],)).fetchall()
        tokens = {r[0]: r[1] for r in w.execute(query("claim"), {
            "worker_id": "hand", "limit": 1000, "lease_seconds": 600, "model_version_ids": None}).fetchall()}
        scores = []
        for cid, pid, part in pairs:
            x = float(rng.uniform(-3, 0))  # the informative version's log-prob: right iff it is high
            right = part == "a" or bool(rng.uniform() < 1 / (1 + np.exp(-4 * (x + 1.5))))
            for rid, version in ((cid, "candidate"), (pid, "parent")):
                logprob = x if version == informative else float(rng.uniform(-3, 0))
                w.execute(query("complete"), {
                    "request_id": rid, "lease_token": tokens[rid], "answer": "x", "finish_reason": "stop",
                    "prompt_tokens": 3, "token_logprobs": [logprob], "prompt_eval_ms": 1.0, "generation_ms": 1.0,
                    "signals": json.dumps({"p_true": 0.95, "rule_format": 0.0})})
            scores.append({"candidate_request_id": cid, "candidate_correct": right or part == "a",
                           "parent_correct": right and part != "a"})
        w.execute(query("complete_job"), {"job_id": gate[0], "lease_token": gate[1],
                                          "result": json.dumps({"scores": scores})})
    decision = _decision(db, job)
    assert decision is not None
    cal = decision["numbers"]["calibration"]
    better, worse = (cal[informative], cal["parent" if informative == "candidate" else "candidate"])
    assert cal["candidate"]["n"] == cal["parent"]["n"] == 120
    assert cal["candidate"]["served"]["brier"] == pytest.approx(cal["parent"]["served"]["brier"])  # same confidence
    assert better["auroc_wrong"] > 0.8 and abs(worse["auroc_wrong"] - 0.5) < 0.15
    assert better["brier"] < worse["brier"] - 0.05
    assert better["brier"] < better["served"]["brier"]  # calibrating P(True) = 0.95 on ~50% accuracy helps
    skill = cal["skill"]
    assert skill[informative] > 0.2 and abs(skill["parent" if informative == "candidate" else "candidate"]) < 0.1
    if informative == "candidate":
        assert skill["lower_bound"] > 0
        assert decision["decision"] == "promote", decision["reason"]
    else:
        assert skill["upper_bound"] < -0.02
        assert decision["decision"] == "reject"
        assert "confidence measurably less informative" in decision["reason"]
    with db.admin() as conn:
        source, n_train, metrics = conn.execute(
            "SELECT heldout_metrics ->> 'source', n_train, heldout_metrics -> 'heldout' FROM reflect.calibrators c "
            "JOIN reflect.model_versions mv ON mv.id = c.model_version_id WHERE mv.name = %s AND c.is_active",
            (decision["candidate"],)).fetchone()
    assert (source, n_train) == ("gate", 120)
    assert metrics["brier"] == pytest.approx(cal["candidate"]["brier"])


def test_the_gate_asks_rewordings_of_the_corrected_prompts(db: Database, keyring: Keyring) -> None:
    """Part r: the parent rewords each corrected prompt (one request per prompt, the instruction as its system
    prompt, evaluation traffic); the worker keeps the acceptable rewordings; both versions answer them with the
    example's own system prompt, scored against the correction; (a) is decided on verbatim and reworded
    prompts together. Bad rewording input is refused with a clear error."""
    _settings(db, curation_heldout_share=0.0, canary_share=0)
    _corrected_history(db, keyring, FACTS, seed=800)
    items = [{"dataset": "test", "id": f"q{i}", "question": q, "answer": a, "embedding": unit_vector(1200 + i)}
             for i, (q, a) in enumerate(RETENTION)]
    with connect(db.dsn("worker"), keyring=keyring) as w:
        lease = _hand_gate(db, w, items, "c")
        job, gate = lease.pop("finetune_job_id"), (lease["job_id"], lease["lease_token"])
        ask = {**lease, "instruction": REPHRASE_SYSTEM, "max_tokens": 32}
        first = w.execute(query("gate_rephrase"), ask).fetchall()
        assert w.execute(query("gate_rephrase"), ask).fetchall() == first  # asked once per gate
        assert sorted(r[2] for r in first) == sorted(q for q, _ in FACTS)
        assert {r[1] for r in first} == {"queued"} and {r[4] for r in first} == {a for _, a in FACTS}

        claimed = w.execute(query("claim"), {"worker_id": "hand", "limit": 100, "lease_seconds": 60,
                                             "model_version_ids": None}).fetchall()
        with connect(db.dsn(), keyring=keyring) as conn:
            asked = conn.execute(
                "SELECT r.id, mv.name, reflect._decrypt(r.system_prompt_enc, r.key_id), e.dataset "
                "FROM reflect.requests r JOIN reflect.model_versions mv ON mv.id = r.model_version_id "
                "JOIN reflect.eval_requests e ON e.request_id = r.id WHERE e.run_label = %s", (f"gate-{gate[0]}",)
            ).fetchall()
        assert {(name, system, dataset) for _, name, system, dataset in asked} == \
            {("tiny", REPHRASE_SYSTEM, "gate_rephrase")} and len(asked) == len(FACTS)
        by_prompt = {r[2]: r[0] for r in first}
        texts = {by_prompt[FACTS[0][0]]: "Rewritten question: Which city is the capital of Zorbia?",
                 by_prompt[FACTS[1][0]]: FACTS[1][0],                    # the same text: not asked
                 by_prompt[FACTS[2][0]]: "Zints are purple. What colour is a zint?"}  # gives the answer away
        with db.admin() as conn:
            example_of = dict(conn.execute("SELECT request_id, item_id::bigint FROM reflect.eval_requests "
                                           "WHERE run_label = %s", (f"gate-{gate[0]}",)).fetchall())
        for rid, token, *_ in claimed:
            if rid in example_of:
                w.execute(query("complete"), {
                    "request_id": rid, "lease_token": token, "answer": texts[example_of[rid]], "finish_reason": "stop",
                    "prompt_tokens": 3, "token_logprobs": [-0.1], "prompt_eval_ms": 1.0, "generation_ms": 1.0,
                    "signals": json.dumps({})})
        rows = w.execute(query("gate_rephrase"), ask).fetchall()
        good = rephrase.accepted(rows)
        reworded_prompt = "Which city is the capital of Zorbia?"
        assert good == [{"example_request_id": by_prompt[FACTS[0][0]], "prompt": reworded_prompt}]

        for bad, message in (({"no": "list"}, "must be an array"),
                             ([{"example_request_id": 1, "prompt": " "}], "must be an array"),
                             ([{"example_request_id": 999999, "prompt": "x?"}], "names no corrected prompt")):
            with pytest.raises(psycopg.Error, match=message) as err:
                w.execute(query("gate_submit"), {**lease, "rephrasings": json.dumps(bad)})
            assert err.value.sqlstate == "PR001"
        n = w.execute(query("gate_submit"), {**lease, "rephrasings": json.dumps(good)}).fetchone()[0]
        assert n == len(FACTS) + 1 + len(RETENTION)
        answers = w.execute(query("gate_answers"), lease).fetchall()
        reworded = [r for r in answers if r[1] == "r"]
        assert [r[2] for r in reworded] == [FACTS[0][1]]  # scored against the correction
        with connect(db.dsn(), keyring=keyring) as conn:
            prompt, system = conn.execute(
                "SELECT reflect._decrypt(prompt_enc, key_id), reflect._decrypt_or_null(system_prompt_enc, key_id) "
                "FROM reflect.requests WHERE id = %s", (reworded[0][0],)).fetchone()
        assert (prompt, system) == (reworded_prompt, None)  # with the example's own system prompt (none)
        scores = [{"candidate_request_id": cid, "candidate_correct": True, "parent_correct": part not in ("a", "r")}
                  for cid, part, *_ in answers]
        w.execute(query("complete_job"), {**lease, "result": json.dumps({"scores": scores})})
    decision = _decision(db, job)
    assert decision is not None and decision["decision"] == "promote", decision
    numbers = decision["numbers"]
    assert (numbers["corrected"]["n"], numbers["rephrased"]["n"], numbers["learned"]["n"]) == (3, 1, 4)
    assert numbers["rephrased"]["difference"] == 1.0


def test_retention_items_never_enter_training(db: Database, keyring: Keyring) -> None:
    """Leakage: a corrected request whose prompt is a near-duplicate of a retention item is left out."""
    items = [{"dataset": "test", "id": "r0", "question": "What is 6 x 7?", "answer": "42", "embedding": unit_vector(5)}]
    with db.admin() as conn:
        conn.execute(query("add_retention_items"), {"items": json.dumps(items), "embedding_model": "test"})
    _corrected_history(db, keyring, [("What's six times seven?", "42")], seed=5)  # same embedding as the item
    _corrected_history(db, keyring, [("Capital of Zorbia?", "Quuxville")], seed=50)
    with db.admin() as conn:
        set_id = conn.execute("SELECT reflect.curate_training_set_v1('pgreflect_app', 'tiny')").fetchone()[0]
        n_leak, n_train = conn.execute("SELECT n_excluded_leakage, n_train + n_heldout FROM reflect.training_sets "
                                       "WHERE id = %s", (set_id,)).fetchone()
    assert (n_leak, n_train) == (1, 1)


def test_training_resumes_from_its_checkpoint_after_sigkill(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    _fast_training(db)
    _settings(db, finetune_epochs=400, finetune_checkpoint_every_s=0.5)
    _corrected_history(db, keyring, FACTS, seed=300)
    job = _finetune(db)
    log = tmp_path / "worker.log"
    proc = spawn_worker(db, keyring, "--model-version", "tiny", "--memory", "off", "--lease-seconds", "5",
                        "--train", "on", log_path=log,
                        env={"PGREFLECT_IMPROVE_DIR": os.environ["PGREFLECT_IMPROVE_DIR"]})
    try:
        wait_for(lambda: (_job(db, job)[3] or {}).get("step", 0) >= 20, timeout=180, interval=0.2,
                 what="a training checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_at = _job(db, job)[3]["step"]
    time.sleep(1)
    # No orphan trainer keeps running (it dies with the worker): no progress after the kill.
    with db.admin() as conn:
        last = conn.execute("SELECT max(step) FROM reflect.training_progress WHERE job_id = %s", (job,)).fetchone()[0]
    time.sleep(2)
    with db.admin() as conn:
        now = conn.execute("SELECT max(step) FROM reflect.training_progress WHERE job_id = %s", (job,)).fetchone()[0]
        assert now == last
        conn.execute("SELECT reflect.reap_expired_v1()")  # the lease expires after 5 s; the reaper requeues
    wait_for(lambda: (db.scalar("SELECT reflect.reap_expired_v1()") or True) and _job(db, job)[0] == "queued",
             timeout=30, interval=0.5, what="the job to be requeued")
    with BackgroundWorker(worker(db, keyring, memory="off", p_true=False, train="on")):
        wait_for(lambda: _job(db, job)[0] == "succeeded", timeout=240, interval=0.5, what="the resumed fine-tune")
    with db.admin() as conn:
        metrics = conn.execute("SELECT training_metrics FROM reflect.model_versions WHERE finetune_job_id = %s",
                               (job,)).fetchone()[0]
    assert metrics["resumed_from_step"] >= killed_at > 0
    assert metrics["steps"] > metrics["resumed_from_step"]


def test_an_adapter_for_another_base_is_refused(db: Database, keyring: Keyring) -> None:
    """The database refuses a fine-tune result trained on other bytes than the parent's GGUF."""
    _corrected_history(db, keyring, FACTS[:1], seed=400)
    job = _finetune(db)
    with connect(db.dsn("worker"), keyring=keyring) as w:
        (row,) = w.execute(query("claim_jobs"), {"worker_id": "hand", "kinds": ["finetune"], "limit": 1,
                                                 "lease_seconds": 60, "model_version_ids": None}).fetchall()
        with pytest.raises(psycopg.Error, match="trained on a GGUF with sha256"):
            w.execute(query("complete_job"), {"job_id": job, "lease_token": row[1], "result": json.dumps(
                {"adapter_path": "/x.gguf", "adapter_sha256": "a" * 64, "base_sha256": "b" * 64})})


def _canary_setup(db: Database) -> None:
    with db.admin() as conn:
        conn.execute(query("register_model"), {"name": "noop-b", "gguf_path": "noop", "sha256": "0" * 64,
                                               "source": "noop", "n_ctx": 4096, "parent": "noop", "activate": False,
                                               "backend": "noop"})
        conn.execute("SELECT reflect.activate_model_version_v1('noop')")
    _settings(db, canary_share=0.5, canary_min_labels=20)
    with db.admin() as conn:
        conn.execute(query("decide_model_version"), {"name": "noop-b", "decision": "canary", "reason": "try it"})


def _canary_traffic(db: Database, keyring: Keyring, right: dict[str, float], n: int = 120) -> dict[str, int]:
    """n requests that name no version, answered by a noop worker, each labelled right with the given rate per
    version (deterministically: the first share of each version's answers)."""
    with Client(db.dsn("app"), keyring=keyring) as c:
        ids = [c.submit(f"question {i}", params={"memory": False}) for i in range(n)]
    drain(db, keyring, backend="noop", model_versions=["noop", "noop-b"])
    with db.admin() as conn:
        served = conn.execute("SELECT r.id, mv.name FROM reflect.requests r JOIN reflect.model_versions mv "
                              "ON mv.id = r.model_version_id WHERE r.id = ANY(%s) ORDER BY r.id", (ids,)).fetchall()
    counts: dict[str, int] = {}
    with connect(db.dsn("app"), keyring=keyring) as conn:
        for rid, name in served:
            k = counts.get(name, 0)
            counts[name] = k + 1
            conn.execute(query("feedback"), {"request_id": rid, "is_correct": (k % 10) < right[name] * 10,
                                             "rating": None, "correction": None, "source": "human"})
    return counts


def test_canary_splits_traffic_and_promotes_the_better_version(db: Database, keyring: Keyring) -> None:
    _canary_setup(db)
    counts = _canary_traffic(db, keyring, {"noop": 0.3, "noop-b": 0.9})
    assert 30 <= counts["noop-b"] <= 90 and counts["noop"] + counts["noop-b"] == 120  # ~half each (binomial)
    with db.admin() as conn:
        status = conn.execute("SELECT state, candidate_labels, parent_labels, glr, threshold "
                              "FROM reflect.canary_status").fetchone()
        assert status[0] == "running" and status[3] > status[4]
        assert conn.execute("SELECT reflect.canary_step_v1()").fetchone()[0] == 1
        states = dict(conn.execute("SELECT name, state FROM reflect.model_states").fetchall())
        decision, reason = conn.execute("SELECT decision, reason FROM reflect.promotion_decisions ORDER BY id DESC "
                                        "LIMIT 1").fetchone()
        canary = conn.execute("SELECT state FROM reflect.canary_status").fetchone()[0]
    assert states["noop-b"] == "active" and states["noop"] == "retired"
    assert (decision, canary) == ("promote", "promoted") and reason.startswith("canary:")


def test_canary_rolls_back_a_worse_version_and_waits_for_evidence(db: Database, keyring: Keyring) -> None:
    _canary_setup(db)
    _settings(db, canary_min_labels=500)
    _canary_traffic(db, keyring, {"noop": 0.9, "noop-b": 0.2})
    with db.admin() as conn:
        assert conn.execute("SELECT reflect.canary_step_v1()").fetchone()[0] == 0  # too few labels yet
    _settings(db, canary_min_labels=20)
    with db.admin() as conn:
        assert conn.execute("SELECT reflect.canary_step_v1()").fetchone()[0] == 1
        states = dict(conn.execute("SELECT name, state FROM reflect.model_states").fetchall())
        canary = conn.execute("SELECT state FROM reflect.canary_status").fetchone()[0]
    assert states["noop"] == "active" and states["noop-b"] == "rejected" and canary == "rolled_back"
    with Client(db.dsn("app"), keyring=keyring) as c:  # default traffic all goes to the parent again
        ids = [c.submit(f"after {i}", params={"memory": False}) for i in range(20)]
    with db.admin() as conn:
        assert conn.execute("SELECT count(DISTINCT model_version_id) FROM reflect.requests WHERE id = ANY(%s)",
                            (ids,)).fetchone()[0] == 1


def test_improve_run_wait_from_the_cli_prints_the_decision(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    """`improve run --wait --json` follows a real fine-tune on the tiny model to the gate's decision; with no
    retention set loaded the gate must refuse to promote, and says why."""
    _fast_training(db)
    _corrected_history(db, keyring, FACTS, seed=600)
    improve_env = {"PGREFLECT_IMPROVE_DIR": os.environ["PGREFLECT_IMPROVE_DIR"]}
    proc = spawn_worker(db, keyring, "--model-version", "tiny", "--memory", "off", "--train", "on",
                        "--poll-interval", "0.2", log_path=tmp_path / "worker.log", env=improve_env)
    try:
        run = subprocess.run([sys.executable, "-m", "pgreflect.cli", "improve", "run", "--login", "pgreflect_app",
                              "--model-version", "tiny", "--wait", "--timeout", "240", "--json"],
                             env={**db.env(keyring), **improve_env}, capture_output=True, text=True, timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["decision"]["decision"] == "reject" and out["decision"]["parent"] == "tiny"
    assert "no retention items" in out["decision"]["reason"]
    assert out["decision"]["numbers"]["corrected"]["n"] == len(FACTS)
    listed = subprocess.run([sys.executable, "-m", "pgreflect.cli", "models", "list"], env=db.env(keyring),
                            capture_output=True, text=True, timeout=60)
    line = next(x for x in listed.stdout.splitlines() if out["candidate"] in x)
    assert "rejected" in line and "parent tiny" in line and "no retention items" in line


def _training_memory(db: Database, job_id: int) -> dict | None:
    with db.admin() as conn:
        row = conn.execute("SELECT decision, serving_paused, gradient_checkpointing, estimate_mb, peak_rss_mb, detail, "
                           "decided_at FROM reflect.training_memory WHERE job_id = %s ORDER BY attempt DESC LIMIT 1",
                           (job_id,)).fetchone()
    return None if row is None else dict(zip(("decision", "serving_paused", "gradient_checkpointing", "estimate_mb",
                                              "peak_rss_mb", "detail", "decided_at"), row, strict=True))


@pytest.mark.realmodel
def test_a_worker_stops_serving_while_it_trains_when_told_to_and_says_so(db: Database, keyring: Keyring) -> None:
    """finetune_pause_serving = always takes the path a run that does not fit beside the models takes (auto):
    the worker finishes what it answers, unloads its models, advertises none, trains, then serves again. A
    request asked meanwhile waits and is answered after training."""
    _fast_training(db)
    _settings(db, finetune_epochs=150, finetune_pause_serving="always")
    _corrected_history(db, keyring, FACTS, seed=500)
    job = _finetune(db)
    w = worker(db, keyring, memory="off", p_true=False, train="on", worker_id="trainer")
    with BackgroundWorker(w):
        decided = wait_for(lambda: _training_memory(db, job), timeout=120, interval=0.1, what="the memory decision")
        with Client(db.dsn("app"), keyring=keyring) as c:
            rid = c.submit("Say hi.", params={"max_tokens": 4, "memory": False}, model_version="tiny")
        advertised = db.scalar("SELECT model_versions FROM reflect.worker_status WHERE worker_id = 'trainer'")
        wait_for(lambda: _job(db, job)[0] == "succeeded", timeout=240, interval=0.2, what="the fine-tune")
        wait_for(lambda: db.scalar("SELECT state::text FROM reflect.requests WHERE id = %s", (rid,)) == "succeeded",
                 timeout=60, interval=0.2, what="the request asked while training")
    assert decided["decision"] == "paused_serving" and decided["serving_paused"]
    assert "stops serving" in decided["detail"]
    assert advertised == []  # read within milliseconds of the decision: the trainer was still importing torch
    with db.admin() as conn:
        claimed, last_step = conn.execute(
            "SELECT r.claimed_at, (SELECT max(recorded_at) FROM reflect.training_progress WHERE job_id = %s) "
            "FROM reflect.requests r WHERE r.id = %s", (job, rid)).fetchone()
        status = conn.execute("SELECT memory_decision, serving_paused FROM reflect.training_status WHERE job_id = %s",
                              (job,)).fetchone()
    assert claimed > last_step  # not answered while training, answered after
    assert status == ("paused_serving", True)
    final = _training_memory(db, job)
    assert final["peak_rss_mb"] is not None
    # the estimate (fitted on the 1.5B default model) against this tiny model's measured peak: never below it
    # (the dangerous side), at most 2.5x above (measured ~2x: the 900 MB runtime allowance dominates here)
    assert final["peak_rss_mb"] <= final["estimate_mb"] <= 2.5 * final["peak_rss_mb"], final


def test_a_training_run_that_cannot_fit_is_refused_with_the_numbers(db: Database, keyring: Keyring) -> None:
    _fast_training(db)
    _settings(db, finetune_memory_reserve_mb=10_000_000, finetune_pause_serving="never")
    _corrected_history(db, keyring, FACTS[:2], seed=600)
    job = _finetune(db)
    with BackgroundWorker(worker(db, keyring, memory="off", p_true=False, train="on")):
        wait_for(lambda: _job(db, job)[0] == "failed", timeout=120, interval=0.2, what="the refusal")
    _, attempts, error, _ = _job(db, job)
    assert attempts == 1 and "training needs about" in error and "10000000 MB kept in reserve" in error
    assert "lower finetune_batch_size or finetune_max_seq_len" in error
    assert _training_memory(db, job)["decision"] == "refused"
    assert db.scalar("SELECT count(*) FROM reflect.training_progress WHERE job_id = %s", (job,)) == 0
