"""Leave-one-dataset-out analysis of collected answers (bench/calibration_lodo_bench.py collects them).

For each dataset D: the calibrator pgreflect fits (reflect._fit_logistic on reflect.calibration_features_v2,
the fit fit_calibrator_v1 uses, at the calibration_l2 setting) is fitted on the other datasets' answers and
measured on D's with reflect.eval_metrics_v1: accuracy and AUROC with bootstrap intervals, ECE beside its
perfect-calibration floor, Brier, selective gain at 80% coverage as a share of the oracle's. Beside it: the
uncalibrated default (P(True)), each signal alone, the calibrator without each group of signals (ablation,
paired bootstrap of the AUROC difference), and a hidden-state probe (pgreflect.meta.probe's fit, as
`pgreflect calibrate --probe` does it: its strength chosen by leave-one-dataset-out inside the training
datasets; as a calibrator feature, its values on the training answers come from probes that did not see
those answers' dataset).
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgreflect.agreement import agreement  # noqa: E402
from pgreflect.embeddings import Embedder, embedding_available  # noqa: E402
from pgreflect.meta import probe, shipped  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, PACKAGED, packaged_path, verified_sha256  # noqa: E402
from pgreflect.paths import datasets_dir  # noqa: E402

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

FIT = """
WITH d AS (SELECT i, v, y FROM unnest(%(values)s::jsonb[], %(correct)s::bool[]) WITH ORDINALITY AS t(v, y, i)),
     f AS (SELECT reflect._fit_logistic(reflect._matrix(array_agg(v ORDER BY i), %(names)s),
                                        array_agg(y ORDER BY i), %(l2)s) AS f FROM d)
SELECT (f).means, (f).stds, (f).weights FROM f
"""
SCORE = """SELECT reflect._logistic_rows(reflect._matrix(%(values)s::jsonb[], %(names)s), %(means)s, %(stds)s,
                                       %(weights)s)"""
METRICS = "SELECT reflect.eval_metrics_v1(%s::float8[], %s::bool[])"
# Signals that enter the calibrator together, removed together in the ablation.
GROUPS = {"p_true": ["p_true"], "log-probs": ["logprob_mean", "logprob_min"], "p_answer": ["p_answer"],
          "length": ["log_tokens"], "rule checks": ["rule_failed"],
          "option distribution": ["option_max_prob", "option_margin", "option_entropy"],
          "kind": ["kind_choice", "kind_number", "kind_long"], "agreement": ["agreement"]}
# Calibrators on fewer signals, fitted and reported like the full one: variant name -> (report key, key of its
# held-out confidences, title, signals left out).
REDUCED = {"without-p-true": ("without_p_true", "-p_true", "without P(True)", GROUPS["p_true"]),
           "without-span-options": ("without_span_options", "-p_answer, option distribution",
                                    "without the answer span's probability and the option distribution",
                                    GROUPS["p_answer"] + GROUPS["option distribution"])}
# The all-data fits written as candidate documents (--ship picks one): name -> (report key, key of its held-out
# confidences, signals left out).
VARIANTS = {"all": ("calibrated", "full", []), **{name: (r[0], r[1], r[3]) for name, r in REDUCED.items()}}
RESAMPLES = 1000
# The collected answers kept in the repository (bench/calibration_lodo_bench.py --collect-only writes them), in
# the order collected: lodo-answers-longer holds date understanding, MMLU and GSM8K again, with room to finish;
# lodo-answers-gsm8k GSM8K once more, 180 questions instead of 40.
ANSWERS = [HERE / "results" / "lodo-answers" / f"{name}.jsonl.gz"
           for name in ("lodo-answers", "lodo-answers-short", "lodo-answers-longer", "lodo-answers-gsm8k")]
# Extra samples of some of those answers, as the agreement follow-up draws them (bench/agreement_bench.py).
AGREEMENT_SAMPLES = HERE / "results" / "lodo-answers" / "agreement-samples.jsonl.gz"
BEFORE = ", before follow-ups"  # suffix of the report keys of confidences without the follow-ups' signals


def load(path: Path) -> list[dict[str, Any]]:
    """Collected answers: the full file (with hidden states) or the repository's compressed copy (without)."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def shipped_features() -> list[str]:
    """The features of the calibrator pgreflect ships for the default model: what a user's refit anchored on
    it uses, so what the benches that stand in for it use."""
    return json.loads((shipped.HERE / f"{PACKAGED[DEFAULT_MODEL].sha256}.json").read_text())["features"]


def load_all(paths: list[Path]) -> list[dict[str, Any]]:
    """The answers of several collections, each tagged with its file ("file"); a dataset collected again in a
    later file replaces its answers from the earlier ones."""
    files = [(path.name, load(path)) for path in paths]
    latest = {r["dataset"]: name for name, rows in files for r in rows}
    return [{**r, "file": name} for name, rows in files for r in rows if latest[r["dataset"]] == name]


class Fitter:
    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.names: list[str] = conn.execute("SELECT reflect.calibration_features_v2()").fetchone()[0]
        self.l2 = conn.execute("SELECT reflect._setting_float('calibration_l2')").fetchone()[0]

    def fit(self, rows: list[dict[str, Any]], names: list[str]) -> tuple[list, list, list]:
        return self.conn.execute(FIT, {"values": [json.dumps(r["features"]) for r in rows],
                                       "correct": [r["correct"] for r in rows], "names": names,
                                       "l2": self.l2}).fetchone()

    def score(self, model: tuple[list, list, list], rows: list[dict[str, Any]], names: list[str]) -> list[float]:
        means, stds, weights = model
        return self.conn.execute(SCORE, {"values": [json.dumps(r["features"]) for r in rows], "names": names,
                                         "means": means, "stds": stds, "weights": weights}).fetchone()[0]

    def held_out(self, rows: list[dict[str, Any]], names: list[str]) -> np.ndarray:
        """Each answer's confidence from the fit on the other datasets' answers (leave-one-dataset-out)."""
        conf = np.zeros(len(rows))
        for held in sorted({r["dataset"] for r in rows}):
            at = [i for i, r in enumerate(rows) if r["dataset"] == held]
            conf[at] = self.score(self.fit([r for r in rows if r["dataset"] != held], names), [rows[i] for i in at],
                                  names)
        return conf

    def metrics(self, conf: list[float], y: list[bool]) -> dict[str, Any]:
        return self.conn.execute(METRICS, (conf, y)).fetchone()[0]

    def per_dataset(self, conf: np.ndarray, y: np.ndarray, datasets: np.ndarray) -> dict[str, dict[str, Any]]:
        return {d: self.metrics(conf[datasets == d].tolist(), y[datasets == d].tolist()) for d in sorted(set(datasets))}


def informative(m: dict[str, Any]) -> bool:
    """A dataset with fewer than 10 right or 10 wrong answers ranks nothing reliably: reported, not averaged."""
    right = round(m["accuracy"] * m["n"])
    return min(right, m["n"] - right) >= 10


def averaged(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The targets' averages over the informative datasets' metrics (AUROC, ECE above its floor, share of the
    oracle's selective gain)."""
    used = {d: m for d, m in per.items() if informative(m)}
    return {"averaged_over": sorted(used), "auroc": float(np.mean([m["auroc"] for m in used.values()])),
            "ece_gap": float(np.mean([m["ece"] - m["ece_floor"] for m in used.values()])),
            "share": float(np.mean([m["selective_gain_share"] for m in used.values()
                                    if m.get("selective_gain_share") is not None]))}


def _xy(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r["state"] for r in rows], dtype=np.float64), np.array([r["correct"] for r in rows])


def _probe(train: list[dict[str, Any]], c: float) -> probe.Probe:
    return probe.fit_logistic(*_xy(train), c)


def _probe_logits(fitted: probe.Probe, rows: list[dict[str, Any]]) -> np.ndarray:
    return fitted.logits(_xy(rows)[0])


def choose_c(rows: list[dict[str, Any]]) -> float:
    """The probe's strength as pgreflect calibrate --probe chooses it: leave-one-dataset-out log-loss."""
    sets = sorted({r["dataset"] for r in rows})
    return probe.choose_strength(*_xy(rows), np.array([sets.index(r["dataset"]) for r in rows]))


def probe_as_feature(fitter: Fitter, train: list[dict[str, Any]], test: list[dict[str, Any]], names: list[str],
                     c: float) -> tuple[np.ndarray, list[float]]:
    """The held-out answers' probe logits (a probe of strength c fitted on the training answers' states), and
    their confidence from the calibrator with the probe as one more feature: on each training answer, the logit of
    a probe that did not see that answer's dataset (nor the held-out one); on the held-out answers, the probe
    fitted on all the training datasets."""
    alone = _probe_logits(_probe(train, c), test)
    train_f = []
    for d in sorted({r["dataset"] for r in train}):
        inner = [r for r in train if r["dataset"] != d]
        part = [r for r in train if r["dataset"] == d]
        for r, z in zip(part, _probe_logits(_probe(inner, c), part), strict=True):
            train_f.append({**r, "features": {**r["features"], "probe": float(z)}})
    test_f = [{**r, "features": {**r["features"], "probe": float(z)}} for r, z in zip(test, alone, strict=True)]
    return alone, fitter.score(fitter.fit(train_f, [*names, "probe"]), test_f, [*names, "probe"])


def auroc(conf: np.ndarray, y: np.ndarray) -> float | None:
    return float(roc_auc_score(y, conf)) if 0 < y.sum() < len(y) else None


def paired_auroc_diff(a: np.ndarray, b: np.ndarray, y: np.ndarray, seed: int = 7) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) on the same answers, with a paired bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(RESAMPLES):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(roc_auc_score(y, a) - roc_auc_score(y, b)), float(lo), float(hi)


def ece(conf: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """reflect.ece_v1's definition: equal-width bins, |sum of confidences - sum of right answers| summed over
    the bins, over n."""
    b = np.minimum(np.floor(conf * bins).astype(int), bins - 1)
    return float(sum(abs(conf[b == k].sum() - y[b == k].sum()) for k in range(bins)) / len(y))


def paired_ece_diff(a: np.ndarray, b: np.ndarray, y: np.ndarray, seed: int = 7) -> tuple[float, float, float]:
    """ECE(a) - ECE(b) on the same answers, with a paired bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    diffs = [ece(a[i], y[i]) - ece(b[i], y[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(RESAMPLES))]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return ece(a, y) - ece(b, y), float(lo), float(hi)


def auroc_ci(v: np.ndarray, y: np.ndarray, seed: int = 11) -> list[float]:
    rng = np.random.default_rng(seed)
    boots = [roc_auc_score(y[i], v[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(RESAMPLES))
             if 0 < y[i].sum() < len(i)]
    return [float(x) for x in np.percentile(boots, [2.5, 97.5])]


def signal_alone(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """One signal's AUROC for telling right from wrong, over the answers that have it, with a bootstrap
    interval; 'direction' says whether higher means more likely right."""
    have = [r for r in rows if r["features"].get(name) is not None]
    if not have:
        return {"n": 0}
    v = np.array([r["features"][name] for r in have], dtype=float)
    y = np.array([r["correct"] for r in have])
    a = auroc(v, y)
    if a is None:
        return {"n": len(have)}
    sign = 1.0 if a >= 0.5 else -1.0
    return {"n": len(have), "auroc": max(a, 1 - a), "ci": auroc_ci(sign * v, y),
            "direction": "higher is right" if sign > 0 else "lower is right"}


def answer_tokens(rows: list[dict[str, Any]]) -> np.ndarray:
    """Each answer's length in tokens, from its log_tokens feature (ln(1 + tokens), reflect._feature_values)."""
    return np.array([round(float(np.exp(r["features"]["log_tokens"]) - 1)) for r in rows])


def p_true_after(rows: list[dict[str, Any]], min_tokens: int) -> list[dict[str, Any]]:
    """The answers as a worker with --p-true-min-tokens serves them: P(True) only after answers of at least
    min_tokens tokens (the pass comes after the answer and changes nothing else, so this is exact). The value
    measured is kept apart for the 'default' column (the uncalibrated P(True) of a fresh install before)."""
    short = answer_tokens(rows) < min_tokens
    return [{**r, "p_true_measured": r["features"].get("p_true"),
             "features": {k: v for k, v in r["features"].items() if k != "p_true"}} if short[i] else r
            for i, r in enumerate(rows)]


def with_p_true(rows: list[dict[str, Any]], path: Path, key: str) -> list[dict[str, Any]]:
    """The answers with their P(True) replaced by another measurement of it (`key` in `path`, by dataset and id:
    bench/p_true_questions.py writes them), for every answer or an error."""
    values = {(v["dataset"], v["id"]): v[key] for v in load(path)}
    missing = [(r["dataset"], r["id"]) for r in rows if (r["dataset"], r["id"]) not in values]
    if missing:
        raise SystemExit(f"{path} has no {key} for {len(missing)} answers, e.g. {missing[0]}")
    return [{**r, "features": {**r["features"], "p_true": values[(r["dataset"], r["id"])]}} for r in rows]


def embedder_if_installed() -> Embedder | None:
    """The embedder the worker compares long answers with, when its package is installed (else word overlap)."""
    return Embedder() if embedding_available() else None


def with_agreement(rows: list[dict[str, Any]], path: Path = AGREEMENT_SAMPLES) -> list[dict[str, Any]]:
    """The answers with the agreement signal where bench/agreement_bench.py drew samples for them (`path`),
    under pgreflect's current agreement rule; "agreement_at_sampling" keeps the rule's value when they were
    drawn. The others keep none (a calibrator takes its training mean for them, as for served traffic)."""
    embedder = embedder_if_installed()
    kept = {(s["dataset"], s["id"]): s for s in load(path)}
    out = []
    for r in rows:
        s = kept.get((r["dataset"], r["id"]))
        if s is None:
            out.append(r)
        else:
            out.append({**r, "features": {**r["features"], "agreement": agreement(s["answer"], s["samples"], embedder)},
                        "agreement_at_sampling": s["agreement_at_sampling"]})
    return out


def compare_p_true(rows: list[dict[str, Any]], values: dict[tuple[str, str], dict[str, float]],
                   variants: dict[str, str], against: str) -> dict[str, Any]:
    """Other measurements of P(True) on the same answers (`values`, by dataset and id) in the calibrator's place:
    each one's AUROC alone, the leave-one-dataset-out calibrator with it as its P(True) (pooled and averaged
    metrics; `variants` maps a report key to a value's name), the calibrator without P(True) ("without"), and
    each variant's pooled AUROC and ECE minus `against`'s with paired bootstrap intervals. The answers are those
    that have values; the collected P(True) is compared with the recomputed one ("p_true" in values)."""
    rows = [{**r, "features": {**r["features"], **values[(r["dataset"], r["id"])]},
             "collected": r["features"]["p_true"]} for r in rows if (r["dataset"], r["id"]) in values]
    y = np.array([r["correct"] for r in rows])
    ds = np.array([r["dataset"] for r in rows])
    out: dict[str, Any] = {"n": len(rows), "recomputed_vs_collected_max_abs": float(np.max(np.abs(
        np.array([r["collected"] - r["features"]["p_true"] for r in rows])))), "alone": {}, "calibrated": {}}
    for name in variants.values():
        v = np.array([r["features"][name] for r in rows])
        out["alone"][name] = {"auroc": auroc(v, y), "ci": auroc_ci(v, y)}
    cluster = start_cluster()
    try:
        with psycopg.connect(pgreflect_database(cluster), autocommit=True) as conn:
            fitter = Fitter(conn)
            conf = {key: fitter.held_out([{**r, "features": {**r["features"], "p_true": r["features"][name]}}
                                          for r in rows], fitter.names) for key, name in variants.items()}
            conf["without"] = fitter.held_out(rows, [n for n in fitter.names if n != "p_true"])
            for key, c in conf.items():
                out["calibrated"][key] = {"pooled": fitter.metrics(c.tolist(), y.tolist()),
                                          **averaged(fitter.per_dataset(c, y, ds))}
            for key in variants:
                if key != against:
                    out[f"{key}_minus_{against}"] = paired_auroc_diff(conf[key], conf[against], y)
                    out[f"{key}_minus_{against}_ece"] = paired_ece_diff(conf[key], conf[against], y)
    finally:
        cluster.destroy()
    return out


def analyse(paths: list[Path], ship: str | None, command: str, collect_minutes: float | None,
            p_true_from: tuple[Path, str] | None = None, agreement_samples: bool = False,
            p_true_min_tokens: int = 0) -> dict[str, Any]:
    started = time.time()
    rows = load_all(paths)
    if p_true_from is not None:
        rows = with_p_true(rows, *p_true_from)
    if p_true_min_tokens:
        rows = p_true_after(rows, p_true_min_tokens)
    if agreement_samples:
        rows = with_agreement(rows)
    sets = sorted({r["dataset"] for r in rows})
    with_state = all(r.get("state") for r in rows)
    cluster = start_cluster()
    try:
        dsn = pgreflect_database(cluster)
        with psycopg.connect(dsn, autocommit=True) as conn:
            fitter = Fitter(conn)
            report = _lodo(fitter, rows, sets, with_state)
            report["p_true_min_tokens"] = p_true_min_tokens
            docs = {v: _ship_document(conn, rows, report, command, v) for v in VARIANTS}
    finally:
        cluster.destroy()
    report["analysis_minutes"] = (time.time() - started) / 60
    report["collect_minutes"] = collect_minutes
    for variant, doc in docs.items():
        candidate = datasets_dir().parent / "bench" / f"calibrator-{variant}.json"
        candidate.parent.mkdir(parents=True, exist_ok=True)
        candidate.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"candidate calibrator ({variant}): {candidate}")
    if ship is not None:
        target = shipped.HERE / f"{docs[ship]['gguf_sha256']}.json"
        target.write_text(json.dumps(docs[ship], indent=1) + "\n")
        print(f"shipped the {ship} calibrator: {target}")
    (HERE / "results" / "calibration-lodo.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(HERE / "results" / "calibration-lodo.md", report, command)
    return report


def _without_followups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "features": {**r["features"], "agreement": None, "critique_verdict": None}} for r in rows]


def _lodo(fitter: Fitter, rows: list[dict[str, Any]], sets: list[str], with_state: bool) -> dict[str, Any]:
    names = fitter.names
    y_all = np.array([r["correct"] for r in rows])
    oof: dict[str, np.ndarray] = {"full": np.zeros(len(rows))}
    # A group no answer has (agreement, unless its samples were added) would change nothing: not ablated.
    groups = {g: drop for g, drop in GROUPS.items()
              if any(r["features"].get(n) is not None for r in rows for n in drop)}
    for key in [f"-{g}" for g in groups] + [r[1] for r in REDUCED.values()]:
        oof[key] = np.zeros(len(rows))
    # With agreement on some answers: each variant's confidences also as served before the follow-up arrives
    # (the held-out answers without their agreement, scored by the same fits).
    followups = "agreement" in groups
    if followups:
        for _, oof_key, _ in VARIANTS.values():
            oof[f"{oof_key}{BEFORE}"] = np.zeros(len(rows))
    if with_state:
        oof["probe alone"] = np.zeros(len(rows))
        oof["full + probe"] = np.zeros(len(rows))
    index = {id(r): i for i, r in enumerate(rows)}
    per: dict[str, dict[str, Any]] = {}
    probe_cs: dict[str, float] = {}
    for held in sets:
        train = [r for r in rows if r["dataset"] != held]
        test = [r for r in rows if r["dataset"] == held]
        at = [index[id(r)] for r in test]
        y = [r["correct"] for r in test]
        fitted = fitter.fit(train, names)
        conf = fitter.score(fitted, test, names)
        oof["full"][at] = conf
        if followups:
            oof[f"full{BEFORE}"][at] = fitter.score(fitted, _without_followups(test), names)
        per[held] = {"calibrated": fitter.metrics(conf, y),
                     "default": fitter.metrics([r.get("p_true_measured", r["features"].get("p_true")) for r in test],
                                               y),
                     "rule_failed_share": float(np.mean([r["features"].get("rule_failed", 0) > 0 for r in test]))}
        for g, drop in groups.items():
            kept = [n for n in names if n not in drop]
            oof[f"-{g}"][at] = fitter.score(fitter.fit(train, kept), test, kept)
        for key, oof_key, _, drop in REDUCED.values():
            kept = [n for n in names if n not in drop]
            fitted = fitter.fit(train, kept)
            oof[oof_key][at] = fitter.score(fitted, test, kept)
            per[held][key] = fitter.metrics(oof[oof_key][at].tolist(), y)
            if followups:
                oof[f"{oof_key}{BEFORE}"][at] = fitter.score(fitted, _without_followups(test), kept)
        if followups:
            for key, oof_key, _ in VARIANTS.values():
                per[held][f"{key}{BEFORE}"] = fitter.metrics(oof[f"{oof_key}{BEFORE}"][at].tolist(), y)
        if with_state:
            c = probe_cs[held] = choose_c(train)
            oof["probe alone"][at], conf_p = probe_as_feature(fitter, train, test, names, c)
            oof["full + probe"][at] = conf_p
            per[held]["calibrated_with_probe"] = fitter.metrics(conf_p, y)
        print(f"held out {held}: AUROC {per[held]['calibrated'].get('auroc')}", flush=True)
    pooled = {k: fitter.metrics(v.tolist(), y_all.tolist()) for k, v in oof.items()
              if k.removesuffix(BEFORE) in ("full", "full + probe", *(r[1] for r in REDUCED.values()))}
    with_followups: dict[str, Any] = {}
    if followups:  # the answers that have agreement: before and after it arrives
        at = np.array([r["features"].get("agreement") is not None for r in rows])
        ds = np.array([r["dataset"] for r in rows])
        for _, oof_key, _ in VARIANTS.values():
            for k in (f"{oof_key}{BEFORE}", oof_key):
                with_followups[k] = {"pooled": fitter.metrics(oof[k][at].tolist(), y_all[at].tolist()),
                                     **averaged(fitter.per_dataset(oof[k][at], y_all[at], ds[at]))}
    files = sorted({r["file"] for r in rows})
    if len(files) > 1:  # each file's answers apart: an earlier collection, scored by fits that also saw the later
        for name in files:
            at = np.array([r["file"] == name for r in rows])
            pooled[f"full, {name}"] = fitter.metrics(oof["full"][at].tolist(), y_all[at].tolist())
    ablation = {k: paired_auroc_diff(oof["full"], v, y_all) for k, v in oof.items()
                if k.startswith("-") and not k.endswith(BEFORE)}
    if with_state:
        ablation["+probe"] = paired_auroc_diff(oof["full + probe"], oof["full"], y_all)
    alone = {n: signal_alone(rows, n) for n in names}
    if with_state:
        z = oof["probe alone"]
        alone["probe (leave-one-dataset-out)"] = {"n": len(rows), "auroc": auroc(z, y_all),
                                                  "ci": auroc_ci(z, y_all), "direction": "higher is right"}
    return {"model": DEFAULT_MODEL, "n": len(rows), "datasets": {d: sum(r["dataset"] == d for r in rows) for d in sets},
            "per_dataset": per, "pooled": pooled, "answers_with_agreement": with_followups,
            "ablation": ablation, "alone": alone, "probe_c": probe_cs,
            "features": names}


def _ship_document(conn: psycopg.Connection, rows: list[dict[str, Any]], report: dict[str, Any], command: str,
                   variant: str) -> dict[str, Any]:
    """The calibrator fitted on every answer, as the document reflect.export_calibrator_v1 writes (set-up
    installs it with reflect.install_calibrator_v1). Its held-out metrics are the leave-one-dataset-out ones:
    numbers on answers the fit that produced them never saw."""
    model = packaged_path(DEFAULT_MODEL)
    fitter = Fitter(conn)
    key, pooled_key, left_out = VARIANTS[variant]
    # Its held-out numbers are those of answers as they are returned: before any follow-up's signal arrives.
    served = pooled_key + BEFORE if pooled_key + BEFORE in report["pooled"] else pooled_key
    names = [n for n in fitter.names if n not in left_out]
    means, stds, weights = fitter.fit(rows, names)
    conf = fitter.score((means, stds, weights), rows, names)
    return {"format": "pgreflect-calibrator-1", "model_version": DEFAULT_MODEL,
            "gguf_sha256": verified_sha256(model), "adapter_sha256": None, "method": "logistic_l2",
            "features": names, "feature_means": means, "feature_stds": stds, "weights": weights,
            "n_train": len(rows), "n_heldout": len(rows),
            "heldout_metrics": {**report["pooled"][served],
                                "kind": "leave-one-dataset-out, pooled" + served.removeprefix(pooled_key)},
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fit": {"command": command, "variant": variant, "n": len(rows), "datasets": report["datasets"],
                    "p_true_min_tokens": report.get("p_true_min_tokens", 0),
                    "in_sample": fitter.metrics(conf, [r["correct"] for r in rows]),
                    "leave_one_dataset_out": {d: v.get(key + BEFORE, v[key]) for d, v in report["per_dataset"].items()},
                    **({"with_followups": report["pooled"][pooled_key]} if served != pooled_key else {}),
                    "report": "bench/results/calibration-lodo.md"}}


def _ci(m: dict[str, Any], key: str) -> str:
    ci = m.get(f"{key}_ci")
    if m.get(key) is None:
        return "n/a"
    return f"{m[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else f"{m[key]:.3f}"


def _row(name: str, m: dict[str, Any], d: dict[str, Any] | None = None) -> str:
    gap = m["ece"] - m["ece_floor"]
    share = m.get("selective_gain_share")
    cells = [name, str(m["n"]), _ci(m, "accuracy"), _ci(m, "auroc"), f"{m['ece']:.3f} ({m['ece_floor']:.3f}, "
             f"{'+' if gap >= 0 else ''}{gap:.3f})", f"{m['brier']:.3f}", "n/a" if share is None else f"{share:.0%}"]
    if d is not None:
        cells += [_ci(d, "auroc"), f"{d['ece']:.3f}"]
    return "| " + " | ".join(cells) + " |"


def write_markdown(path: Path, report: dict[str, Any], command: str) -> None:
    per = report["per_dataset"]
    lines = [f"# Leave-one-dataset-out calibration, {report['model']}", "",
             f"Command: `.venv/bin/python {command}`; collection {report['collect_minutes'] or 0:.0f} min, "
             f"analysis {report['analysis_minutes']:.0f} min, 2 cores. Greedy answers, memory and follow-ups off "
             "(the per-answer signals only, as served traffic has them), every answer labelled with its ground "
             f"truth: {report['n']} answers from {len(per)} datasets "
             f"({', '.join(f'{d} {n}' for d, n in report['datasets'].items())}).", "",
             "Each row: the calibrator fitted on the other datasets' answers, measured on this one's (never seen). "
             "Intervals: bootstrap 95%. ECE (floor, gap): the ECE of these confidences, the mean ECE a perfectly "
             "calibrated score would show at this n, and the difference (target: gap <= 0.02). Share: selective "
             "gain at 80% coverage as a share of the oracle's (target >= 70%). 'default': the uncalibrated "
             "confidence a fresh install had before (P(True)). Rule check failed: the share of answers a rule check "
             "flags (cut off by the token budget, not in the format the question asks for, such as a reasoned "
             "answer where it asks for only the letter, a refusal, a loop).", "",
             "| held out | n | accuracy | AUROC | ECE (floor, gap) | Brier | share of oracle gain | default AUROC "
             "| default ECE |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in per.items():
        lines.append(_row(f"{name} (rule check failed {r['rule_failed_share']:.0%})", r["calibrated"],
                          r["default"]))
    titles = [("calibrated", "every signal"), *((r[0], r[2]) for r in REDUCED.values())]
    if any(f"calibrated{BEFORE}" in r for r in per.values()):
        titles += [(f"{key}{BEFORE}", f"{title}{BEFORE}") for key, title in titles]
    for key, title in titles:
        avg = averaged({d: r[key] for d, r in per.items()})
        left = sorted(set(per) - set(avg["averaged_over"]))
        lines += ["", f"Averaged over the {len(avg['averaged_over'])} held-out datasets with at least 10 right and 10 "
                  f"wrong answers ({title}{'; not averaged: ' + ', '.join(left) if left else ''}): AUROC "
                  f"{avg['auroc']:.3f}, ECE gap {avg['ece_gap']:+.3f}, share of oracle gain {avg['share']:.0%}."]
    lines += ["", "Pooled (every answer scored by the calibrator that did not see its dataset):", "",
              "| pooled | n | accuracy | AUROC | ECE (floor, gap) | Brier | share of oracle gain |",
              "|---|---|---|---|---|---|---|"]
    labels = {"full": "every signal", "full + probe": "every signal + probe", **{r[1]: r[2] for r in REDUCED.values()}}
    for name, m in report["pooled"].items():
        base = name.removesuffix(BEFORE)
        label = labels.get(base, base.replace("full, ", "every signal, the answers of "))
        lines.append(_row(label + name[len(base):], m))
    for key, _, title, _ in REDUCED.values():
        lines += ["", f"{title[0].upper()}{title[1:]} (the calibrator refitted without these signals, "
                  "leave-one-dataset-out):",
                  "", "| held out | n | accuracy | AUROC | ECE (floor, gap) | Brier | share of oracle gain |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in per.items():
            lines.append(_row(name, r[key]))
    if any("calibrated_with_probe" in r for r in per.values()):
        lines += ["", "With the hidden-state probe as one more feature (probe strength C per held-out dataset: "
                  f"{json.dumps(report['probe_c'])}):", "",
                  "| held out | n | accuracy | AUROC | ECE (floor, gap) | Brier | share of oracle gain |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in per.items():
            lines.append(_row(name, r["calibrated_with_probe"]))
    lines += ["", "Each signal alone, over the answers that have it (AUROC for telling right from wrong, oriented; "
              "bootstrap 95%):", "", "| signal | n | AUROC | direction |", "|---|---|---|---|"]
    for name, a in report["alone"].items():
        if a.get("auroc") is not None:
            lines.append(f"| {name} | {a['n']} | {a['auroc']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] | "
                         f"{a['direction']} |")
    if report.get("answers_with_agreement"):
        lines += ["", "The answers that have agreement, before and after it arrives (same fits):", "",
                  "| calibrator | n | pooled AUROC | pooled ECE (floor) | averaged AUROC | averaged ECE gap | "
                  "averaged share |", "|---|---|---|---|---|---|---|"]
        for name, m in report["answers_with_agreement"].items():
            base = name.removesuffix(BEFORE)
            p = m["pooled"]
            lines.append(f"| {labels.get(base, base)}{name[len(base):] or ', with agreement'} | {p['n']} | "
                         f"{_ci(p, 'auroc')} | {p['ece']:.3f} ({p['ece_floor']:.3f}) | {m['auroc']:.3f} | "
                         f"{m['ece_gap']:+.3f} | {m['share']:.0%} |")
    lines += ["", "Ablation, pooled leave-one-dataset-out AUROC: the full calibrator minus the calibrator without "
              "the group (positive: the group helps), paired bootstrap 95%:", "", "| group | AUROC change | 95% |",
              "|---|---|---|"]
    for name, (d, lo, hi) in report["ablation"].items():
        label = f"adding {name[1:]}" if name.startswith("+") else f"{name[1:]}"
        lines.append(f"| {label} | {d:+.3f} | [{lo:+.3f}, {hi:+.3f}] |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
