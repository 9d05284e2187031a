"""A calibrator travels as a document tied to the model's bytes: exported, shipped for a packaged model's
sha256 and installed by set-up (pgreflect.meta.shipped), used from the first answer, refused for other
bytes, and refined by the version's own labels (a fit anchored on it) only when they calibrate better."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest
from scipy.optimize import minimize

from pgreflect.keys import Keyring
from pgreflect.meta import shipped
from pgreflect.sql import query

from conftest import Database
from helpers import client, drain, synthetic_labelled_answers


def _fitted_document(db: Database, keyring: Keyring, seed: int = 11, kinds: tuple[str, ...] = ()) -> dict:
    synthetic_labelled_answers(db, keyring, 300, seed=seed, kinds=kinds)
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


def _penalised_fit_reference(z: np.ndarray, y: np.ndarray, anchor: np.ndarray, l2: float, l2_intercept: float
                             ) -> np.ndarray:
    """The anchored fit's optimum by a general-purpose minimiser (scipy), for comparison with the SQL."""
    penalty = np.array([l2_intercept] + [l2] * (len(anchor) - 1))

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        p = 1 / (1 + np.exp(-s))
        nll = float(np.sum(np.logaddexp(0, s) - y * s) + 0.5 * np.sum(penalty * (w - anchor) ** 2))
        return nll, z.T @ (p - y) + penalty * (w - anchor)

    return minimize(loss, anchor, jac=True, method="L-BFGS-B",
                    options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000}).x


def test_the_anchored_fit_finds_the_penalised_optimum_around_its_anchor(db: Database) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3))
    x[rng.uniform(size=x.shape) < 0.1] = np.nan  # unmeasured signals take the given mean
    means, sds = np.array([0.1, -0.2, 0.0]), np.array([1.0, 2.0, 0.5])
    z = np.hstack([np.ones((60, 1)), (np.where(np.isnan(x), means, x) - means) / sds])
    y = (rng.uniform(size=60) < 1 / (1 + np.exp(-(z @ np.array([-1.0, 2.0, 0.0, -0.5]))))).astype(float)
    anchor = np.array([0.5, 1.0, 0.3, 0.0])
    rows = [[None if np.isnan(v) else float(v) for v in r] for r in x]
    with db.admin() as conn:
        def fit(l2: float, l2_intercept: float, centre: np.ndarray = anchor) -> np.ndarray:
            return np.array(conn.execute(
                "SELECT weights FROM reflect._fit_logistic_around(%s::float8[], %s, %s, %s, %s, %s, %s)",
                (rows, [bool(v) for v in y], means.tolist(), sds.tolist(), centre.tolist(), l2, l2_intercept)
            ).fetchone()[0])

        for l2, l2_intercept in [(1.0, 0.1), (10.0, 1.0), (0.5, 0.0)]:
            # (L-BFGS stops a little before Newton-Raphson's 1e-8 steps)
            np.testing.assert_allclose(fit(l2, l2_intercept), _penalised_fit_reference(z, y, anchor, l2, l2_intercept),
                                       atol=1e-4)
        # Started far from the labels (confidences near 0 where about half are right: almost no curvature), a
        # full Newton step overshoots; the halved steps still reach the optimum.
        far = np.array([-9.0, 6.0, -4.0, 3.0])
        np.testing.assert_allclose(fit(0.3, 0.03, far), _penalised_fit_reference(z, y, far, 0.3, 0.03), atol=1e-4)
        np.testing.assert_allclose(fit(1e9, 1e9), anchor, atol=1e-6)  # a prior that certain does not move
        # With a free intercept and the weights held at the anchor's, only the base rate is refitted: the mean
        # confidence equals the labels' accuracy.
        held = fit(1e9, 0.0)
        np.testing.assert_allclose(held[1:], anchor[1:], atol=1e-6)
        assert np.mean(1 / (1 + np.exp(-(z @ held)))) == pytest.approx(y.mean(), abs=1e-6)
        # The plain fit is the same fit around zero with its own standardisation.
        plain = conn.execute("SELECT means, stds, weights FROM reflect._fit_logistic(%s::float8[], %s, 1.0)",
                             (rows, [bool(v) for v in y])).fetchone()
        around_zero = conn.execute(
            "SELECT weights FROM reflect._fit_logistic_around(%s::float8[], %s, %s, %s, %s, 1.0, 0.0)",
            (rows, [bool(v) for v in y], plain[0], plain[1], [0.0] * 4)).fetchone()[0]
        np.testing.assert_allclose(plain[2], around_zero, atol=1e-9)
        with pytest.raises(psycopg.Error, match="anchor weights") as err:
            fit(1.0, 1.0, anchor[:3])
        assert err.value.sqlstate == "PR001"


def _without(doc: dict, left_out: list[str]) -> dict:
    """The calibrator document on fewer features (as the shipped one leaves out signals that do not transfer)."""
    kept = [i for i, name in enumerate(doc["features"]) if name not in left_out]
    return {**doc, "features": [doc["features"][i] for i in kept],
            "feature_means": [doc["feature_means"][i] for i in kept],
            "feature_stds": [doc["feature_stds"][i] for i in kept],
            "weights": [doc["weights"][0], *(doc["weights"][1 + i] for i in kept)]}


@pytest.mark.parametrize("left_out", [[], ["p_answer", "option_max_prob", "option_margin", "option_entropy"]])
def test_a_few_labels_refine_the_installed_calibrator_around_it(db: Database, keyring: Keyring,
                                                                left_out: list[str]) -> None:
    """A user whose traffic is harder than what the shipped calibrator saw (same signal, lower base rate):
    25 labels are too few for a fit of their own (calibration_min_labels 50) but enough to move the installed
    calibrator's intercept, with the signal's weight kept near the installed one; on the installed one's
    features when it leaves some out."""
    full = _fitted_document(db, keyring)
    doc = _without(full, left_out)
    assert set(full["features"]) - set(doc["features"]) == set(left_out)
    with db.admin() as conn:
        installed = conn.execute(query("install_calibrator"), {"model_version": "tiny",
                                                               "document": json.dumps(doc)}).fetchone()[0]
    truth = synthetic_labelled_answers(db, keyring, 25, seed=21, shift=-2.5)
    with db.admin() as conn:
        assert conn.execute(query("refit_calibrators")).fetchone()[0] == 1
        features, weights, metrics = conn.execute(
            "SELECT features, weights, heldout_metrics FROM reflect.calibrators WHERE id <> %s "
            "ORDER BY id DESC LIMIT 1", (installed,)).fetchone()
    assert metrics["anchored_on"] == installed and features == doc["features"]
    assert list(metrics["train_labels_by_kind"]) == ["unknown"]  # these answers report no kind
    anchor = dict(zip(["intercept", *doc["features"]], doc["weights"], strict=True))
    got = dict(zip(["intercept", *features], weights, strict=True))
    assert got["intercept"] < anchor["intercept"] - 0.5  # the base rate moved down
    slope = got["logprob_mean"] + got["logprob_min"]
    assert slope > 0.5 * (anchor["logprob_mean"] + anchor["logprob_min"])  # the signal kept its meaning
    assert truth.mean() < 0.35


KIND_NAMES = ["signal", "kind_choice", "kind_number", "kind_long"]


def _kind_rows(kinds: list[str], signal: np.ndarray) -> list[list[float | None]]:
    return [[float(s), *(float(k == name) for name in ("choice", "number", "long"))] for k, s in zip(
        kinds, signal, strict=True)]


def test_a_refit_on_one_kind_of_question_leaves_the_other_kinds_where_they_were(db: Database) -> None:
    """Labels of multiple-choice answers only, from harder traffic than the anchor's (base rate lower): the
    kinds fit lowers the choice answers' confidence and leaves number, long and short answers where the anchor
    put them; the plain anchored fit (one free intercept) lowers them all. The folded weights score exactly as
    the fit with a raw term per kind; without the kind features the fit is the plain one."""
    rng = np.random.default_rng(5)
    means, sds = [0.0, 0.25, 0.35, 0.15], [1.0, 0.433, 0.477, 0.357]
    anchor = [0.2, 1.5, 0.1, -0.3, 0.05]
    n = 80
    signal = rng.normal(size=n)
    labels = [bool(v) for v in rng.uniform(size=n) < 1 / (1 + np.exp(-(1.5 * signal - 2.0)))]  # ~0.25 right
    rows = _kind_rows(["choice"] * n, signal)
    probe = [[0.0, *(float(k == name) for name in ("choice", "number", "long"))]
             for k in ("choice", "number", "long", "short")]
    with db.admin() as conn:
        def conf(weights: list[float]) -> np.ndarray:
            return np.array(conn.execute("SELECT reflect._logistic_rows(%s::float8[], %s, %s, %s)",
                                         (probe, means, sds, weights)).fetchone()[0])

        kinds_fit = conn.execute("SELECT weights FROM reflect._fit_logistic_around_kinds(%s::float8[], %s, %s, %s, "
                                 "%s, %s, 30, 0.3)", (rows, labels, KIND_NAMES, means, sds, anchor)).fetchone()[0]
        plain_fit = conn.execute("SELECT weights FROM reflect._fit_logistic_around(%s::float8[], %s, %s, %s, %s, "
                                 "30, 0.3)", (rows, labels, means, sds, anchor)).fetchone()[0]
        before, kinds_after, plain_after = conf(anchor), conf(kinds_fit), conf(plain_fit)
        assert kinds_after[0] < before[0] - 0.2 and plain_after[0] < before[0] - 0.2  # choice: both move it down
        np.testing.assert_allclose(kinds_after[1:], before[1:], atol=0.02)  # the other kinds stay
        assert np.all(plain_after[1:] < before[1:] - 0.1)  # with one intercept they all went down

        # the fold: the kinds fit is the penalised fit with a raw one-hot column per kind, its levels folded
        # into the intercept and the kind weights; both score every kind of answer alike
        raw = [[*r, *r[1:], 1 - sum(r[1:])] for r in rows]
        wide = conn.execute("SELECT weights FROM reflect._fit_logistic_around(%s::float8[], %s, %s, %s, %s, %s)",
                            (raw, labels, means + [0.0] * 4, sds + [1.0] * 4, anchor + [0.0] * 4,
                             [30.0] * 5 + [0.3] * 4)).fetchone()[0]
        wide_probe = [[*r, *r[1:], 1 - sum(r[1:])] for r in probe]
        wide_conf = conn.execute("SELECT reflect._logistic_rows(%s::float8[], %s, %s, %s)",
                                 (wide_probe, means + [0.0] * 4, sds + [1.0] * 4, wide)).fetchone()[0]
        np.testing.assert_allclose(kinds_after, wide_conf, atol=1e-9)

        # an answer with no recorded kind counts as the anchor's mix; without kind features, the plain fit
        rows[0][1:] = [None, None, None]
        assert conn.execute("SELECT weights FROM reflect._fit_logistic_around_kinds(%s::float8[], %s, %s, %s, %s, "
                            "%s, 30, 0.3)", (rows, labels, KIND_NAMES, means, sds, anchor)).fetchone()[0]
        no_kinds = [r[:1] for r in rows]
        np.testing.assert_allclose(
            conn.execute("SELECT weights FROM reflect._fit_logistic_around_kinds(%s::float8[], %s, %s, %s, %s, %s, "
                         "30, 0.3)", (no_kinds, labels, ["signal"], means[:1], sds[:1], anchor[:2])).fetchone()[0],
            conn.execute("SELECT weights FROM reflect._fit_logistic_around(%s::float8[], %s, %s, %s, %s, 30, 0.3)",
                         (no_kinds, labels, means[:1], sds[:1], anchor[:2])).fetchone()[0], atol=1e-12)


def test_labels_of_one_kind_refit_that_kind_only_through_the_product_path(db: Database, keyring: Keyring) -> None:
    """The shipped calibrator stand-in fitted on mixed kinds; a user labels 40 harder multiple-choice answers;
    the pg_cron job's refit lowers multiple-choice confidence and leaves numeric and short answers'."""
    doc = _fitted_document(db, keyring, seed=31, kinds=("choice", "number", "short"))
    with db.admin() as conn:
        installed = conn.execute(query("install_calibrator"), {"model_version": "tiny",
                                                               "document": json.dumps(doc)}).fetchone()[0]
    assert {"kind_choice", "kind_number", "kind_long"} <= set(doc["features"])
    synthetic_labelled_answers(db, keyring, 40, seed=32, shift=-2.5, kinds=("choice",))
    with db.admin() as conn:
        assert conn.execute(query("refit_calibrators")).fetchone()[0] == 1
        refit = conn.execute("SELECT id FROM reflect.calibrators WHERE id <> %s AND is_active", (installed,)).fetchone()
        assert refit is not None, "the refit calibrates the held-out answers better and is active"
        n_train, by_kind = conn.execute("SELECT n_train, heldout_metrics -> 'train_labels_by_kind' "
                                        "FROM reflect.calibrators WHERE id = %s", refit).fetchone()
        assert by_kind == {"choice": n_train}  # the user's labels, all multiple choice (the fit's were cleared)

        def conf(cal: int, kind: str, logprob: float) -> float:
            values = {"logprob_mean": logprob, "logprob_min": logprob, "p_true": 0.5, "rule_failed": 0,
                      "log_tokens": float(np.log(2)), "kind_choice": float(kind == "choice"),
                      "kind_number": float(kind == "number"), "kind_long": float(kind == "long")}
            return conn.execute("SELECT reflect._logistic(reflect._vector(%s::jsonb, features), feature_means, "
                                "feature_stds, weights) FROM reflect.calibrators WHERE id = %s",
                                (json.dumps(values), cal)).fetchone()[0]

        for logprob in (-2.0, -1.5, -1.0):
            assert conf(refit[0], "choice", logprob) < conf(installed, "choice", logprob) - 0.1
            for kind in ("number", "short"):
                assert conf(refit[0], kind, logprob) == pytest.approx(conf(installed, kind, logprob), abs=0.05)
