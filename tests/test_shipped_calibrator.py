"""A calibrator travels as a document tied to the model's bytes: exported, shipped for a packaged model's
sha256 and installed by set-up (pgreflect.meta.shipped), used from the first answer, refused for other
bytes, and refined by the version's own labels only when they calibrate better."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgreflect.keys import Keyring
from pgreflect.meta import shipped
from pgreflect.sql import query

from conftest import Database
from helpers import client, drain, synthetic_labelled_answers


def _fitted_document(db: Database, keyring: Keyring) -> dict:
    synthetic_labelled_answers(db, keyring, 300, seed=11)
    with db.admin() as conn:
        conn.execute(query("fit_calibrator"), {"model_version": "tiny"})
        doc = conn.execute(query("export_calibrator"), {"model_version": "tiny"}).fetchone()[0]
        # a fresh install: no calibrator, no labels
        conn.execute("UPDATE reflect.answers SET calibrator_id = NULL")
        conn.execute("DELETE FROM reflect.calibrators")
        conn.execute("DELETE FROM reflect.feedback")
    return doc


def test_the_shipped_calibrator_is_installed_and_used_from_the_first_answer(
        db: Database, keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _fitted_document(db, keyring)
    sha = db.scalar("SELECT sha256 FROM reflect.model_versions WHERE name = 'tiny'")
    assert doc["gguf_sha256"] == sha and doc["format"] == "pgreflect-calibrator-1"
    (tmp_path / f"{sha}.json").write_text(json.dumps(doc))
    monkeypatch.setenv("PGREFLECT_CALIBRATORS_DIR", str(tmp_path))
    assert shipped.install(db.dsn(), "smollm2", db.scalar("SELECT sha256 FROM reflect.model_versions "
                                                          "WHERE name = 'smollm2'")) is None  # none ships for it
    cal = shipped.install(db.dsn(), "tiny", sha)
    assert cal is not None and shipped.install(db.dsn(), "tiny", sha) == cal  # installed once
    with client(db, keyring) as c:
        rid = c.submit("What is 2 + 2?", params={"max_tokens": 4, "memory": False})
    drain(db, keyring, memory="off")
    with client(db, keyring) as c:
        got = c.get(rid)
    assert got["calibrated"] is True
    assert db.scalar("SELECT calibrator_id FROM reflect.answers WHERE request_id = %s", (rid,)) == cal
    source = db.scalar("SELECT heldout_metrics ->> 'source' FROM reflect.calibrators WHERE id = %s", (cal,))
    assert source == "installed"


def test_a_calibrator_for_other_bytes_or_malformed_is_refused(db: Database, keyring: Keyring) -> None:
    doc = _fitted_document(db, keyring)
    with db.admin() as conn:
        for bad, message in [({**doc, "gguf_sha256": "0" * 64}, "fitted on other model bytes"),
                             ({**doc, "features": [*doc["features"][:-1], "astrology"]}, "unknown calibrator features"),
                             ({**doc, "weights": doc["weights"][:-1]}, "malformed calibrator document"),
                             ({**doc, "format": "something else"}, "not a pgreflect calibrator document")]:
            with pytest.raises(psycopg.Error, match=message) as err:
                conn.execute(query("install_calibrator"), {"model_version": "tiny", "document": json.dumps(bad)})
            assert err.value.sqlstate == "PR001"
        assert conn.execute("SELECT count(*) FROM reflect.calibrators").fetchone()[0] == 0


def test_calibrate_export_and_install_from_the_cli(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    synthetic_labelled_answers(db, keyring, 300, seed=12)
    out = tmp_path / "cal.json"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pgreflect.cli", "calibrate", *args], env=db.env(keyring),
                              capture_output=True, text=True, timeout=120)

    assert cli("--model-version", "tiny").returncode == 0
    done = cli("--model-version", "tiny", "--export", str(out))
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert len(doc["weights"]) == len(doc["features"]) + 1 and doc["heldout_metrics"]["heldout"]["n"] > 0
    again = cli("--model-version", "tiny", "--install", str(out))
    assert again.returncode == 0 and "installed" in again.stdout
    # kept beside the active one (it was active already): the version's own fit stays active
    assert db.scalar("SELECT count(*) FILTER (WHERE is_active) FROM reflect.calibrators") == 1
    refused = cli("--model-version", "smollm2", "--install", str(out))
    assert refused.returncode != 0 and "fitted on other model bytes" in refused.stderr
    assert cli("--export", str(out)).returncode == 2  # needs --model-version


def test_every_shipped_calibrator_installs_for_its_packaged_model(db: Database) -> None:
    """Each document in the package is for a packaged model's exact bytes, uses features the database knows
    and installs as that model's active calibrator; the default model has one."""
    from pgreflect.models import DEFAULT_MODEL, PACKAGED

    docs = {path.stem: json.loads(path.read_text()) for path in sorted(shipped.HERE.glob("*.json"))}
    by_sha = {m.sha256: name for name, m in PACKAGED.items()}
    assert PACKAGED[DEFAULT_MODEL].sha256 in docs
    for sha, doc in docs.items():
        assert doc["gguf_sha256"] == sha and sha in by_sha, f"{sha}: not a packaged model's calibrator"
        assert doc["fit"]["report"] and doc["fit"]["leave_one_dataset_out"]  # the fit behind it is recorded
        with db.admin() as conn:
            conn.execute("INSERT INTO reflect.model_versions (name, gguf_path, source, sha256) "
                         "VALUES (%s, '/nonexistent.gguf', 'test', %s)", (f"shipped-{sha[:8]}", sha))
            cal = conn.execute(query("install_calibrator"), {"model_version": f"shipped-{sha[:8]}",
                                                             "document": json.dumps(doc)}).fetchone()[0]
            active, features = conn.execute("SELECT is_active, features FROM reflect.calibrators WHERE id = %s",
                                            (cal,)).fetchone()
        assert active and features == doc["features"]
