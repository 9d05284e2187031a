"""The evaluation harness behind `pgreflect eval`: questions in, answers, labels and calibration metrics out.

It goes through the public path only: each question is submitted like an app submits (INSERT into
reflect.app_requests, with an idempotency key per run and item, so an interrupted run resumes), answers are
scored against the reference with pgreflect.scoring, and each verdict is recorded with reflect.feedback_v1
(source ground_truth), exactly as a person's label would be. Metrics use the database's own definitions
(reflect.auroc_v1, ece_v1, brier_v1, accuracy_at_coverage_v1).

The verdicts are recorded once the run stops waiting for answers (all in, timed out or aborted), not one by
one: labels are what the version's calibrator refits on (every calibration_refit_new_labels, by pg_cron), and
recorded as they came they had the rest of a run scored by refits on its own first answers, so its metrics
measured a mix of calibrators fitted on the data they scored (from the 27th of 200 MMLU answers on,
bench/results/out-of-box.md). This way one calibrator scores the run, and the labels refine the next one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pgreflect.client import Client
from pgreflect.errors import InvalidInput, QueueFull
from pgreflect.scoring import is_correct, kind_of
from pgreflect.sql import query

QUEUE_FULL_WAIT_S = 2.0  # between submissions refused because the version's queue is at its limit


@dataclass
class EvalConfig:
    file: Path
    out: Path
    report: Path | None = None
    plot: Path | None = None
    model_version: str | None = None
    max_tokens: int = 256
    run_label: str = field(default_factory=lambda: time.strftime("eval-%Y%m%d-%H%M%S"))
    memory: bool = True
    timeout: float = 3600.0
    record_labels: bool = True


def read_items(path: Path) -> list[dict[str, Any]]:
    items, seen = [], set()
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) or "id" not in item:
                raise InvalidInput(f'{path}:{n}: each line needs "id" and a string "question"')
            item["id"] = str(item["id"])
            if item["id"] in seen:
                raise InvalidInput(f"{path}:{n}: duplicate id {item['id']!r}")
            seen.add(item["id"])
            if item.get("answer") is not None:
                item["answer"] = str(item["answer"])
            aliases = item.get("aliases", [])
            if not isinstance(aliases, list) or not all(isinstance(a, str | int | float) for a in aliases):
                raise InvalidInput(f'{path}:{n}: "aliases" must be a list of accepted answers')
            item["aliases"] = [str(a) for a in aliases]
            items.append(item)
    if not items:
        raise InvalidInput(f"{path}: no questions")
    return items


def _rule_failed(signals: dict[str, float]) -> float | None:
    rules = [v for k, v in signals.items() if k.startswith("rule_")]
    return max(rules) if rules else None


def run(cfg: EvalConfig, client: Client, progress: bool = True,
        abort: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """Each result is written to cfg.out as soon as its answer and follow-ups are in. When cfg.timeout runs
    out, what was answered is kept, summarised and reported as incomplete; the same run label resumes (the
    submissions are idempotent, answers already labelled are not labelled again)."""
    items = read_items(cfg.file)
    params = {"max_tokens": cfg.max_tokens, "temperature": 0, "memory": cfg.memory}
    ids: dict[str, int] = {}
    for item in tqdm(items, desc="submitting", disable=not progress, unit="q"):
        while True:  # a run longer than the version's queue limit (max_queued_per_version) feeds it as it drains
            try:
                rid = client.submit(item["question"], params=params, idempotency_key=f"{cfg.run_label}:{item['id']}",
                                    caller="pgreflect-eval", model_version=cfg.model_version)
                break
            except QueueFull:
                if abort is not None and (why := abort()):
                    raise RuntimeError(why) from None
                time.sleep(QUEUE_FULL_WAIT_S)
        ids[item["id"]] = rid
        if item.get("dataset"):
            client.conn.execute(query("tag_eval_request"), {"request_id": rid, "dataset": item["dataset"],
                                                             "item_id": item["id"], "run_label": cfg.run_label})
    results: list[dict[str, Any]] = []
    verdicts: list[tuple[int, bool]] = []  # recorded when the run stops waiting (module docstring)
    deadline = time.monotonic() + cfg.timeout
    stopped = None
    try:
        with cfg.out.open("w") as f:
            for item in tqdm(items, desc="answering", disable=not progress, unit="q"):
                try:
                    row = _finished(client, ids[item["id"]], deadline, abort)
                except TimeoutError as exc:
                    stopped = str(exc)
                    break
                out = _result(cfg, item, ids[item["id"]], row)
                if cfg.record_labels and "correct" in out and row["is_correct"] is None:  # not twice on resume
                    verdicts.append((ids[item["id"]], out["correct"]))
                results.append(out)
                f.write(json.dumps(out, default=str) + "\n")
                f.flush()
    finally:
        _label(client, verdicts)
    summary = summarise(client, results, cfg, items)
    summary["labelled"] = len(verdicts)
    summary["complete"] = stopped is None
    if stopped is not None:
        summary["stopped"] = (f"timeout after {cfg.timeout:.0f} s ({stopped}); {len(results)} of {len(items)} "
                              f"answered and kept; resume with --run-label {cfg.run_label}")
    if cfg.report:
        write_report(cfg, summary)
    if cfg.plot:
        plot_reliability(cfg.plot, results, summary)
    return summary


def _finished(client: Client, rid: int, deadline: float, abort: Callable[[], str | None] | None) -> dict[str, Any]:
    """The request once it is final and its follow-ups (critique, agreement: they change the confidence) are
    done; TimeoutError at the deadline."""
    client.wait(rid, timeout=max(0.0, deadline - time.monotonic()), abort=abort)
    while (row := client.get(rid))["followups_pending"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"follow-ups of request {rid} still pending")
        reason = abort() if abort else None
        if reason:
            raise RuntimeError(reason)
        time.sleep(0.5)
    return row


def _label(client: Client, verdicts: list[tuple[int, bool]]) -> None:
    with client.conn.transaction():
        for rid, correct in verdicts:
            client.conn.execute(query("feedback"), {"request_id": rid, "is_correct": correct, "rating": None,
                                                    "correction": None, "source": "ground_truth"})


def _result(cfg: EvalConfig, item: dict[str, Any], rid: int, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": item["id"], "dataset": item.get("dataset"), "run_label": cfg.run_label, "request_id": rid,
        "state": row["state"], "answer": row["answer"], "confidence": row["confidence"],
        "calibrated": row["calibrated"], "action": row["action"],
        "signals": {**(row["signals"] or {}), "logprob_mean": row["logprob_mean"], "logprob_min": row["logprob_min"]},
        "tokens": row["tokens"], "error": row["last_error"],
    }
    if item.get("answer") is not None and row["state"] == "succeeded":
        out["reference"] = item["answer"]
        out["correct"] = is_correct(row["answer"] or "", item["answer"], item.get("aliases", ()))
        out["scored_as"] = kind_of(item["answer"])
    return out


def metrics(client: Client, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The database's definitions (reflect.eval_metrics_v1): accuracy and AUROC with bootstrap 95% intervals,
    ECE beside its perfect-calibration floor, Brier, selective gain at 80% coverage as a share of the oracle's."""
    scored = [r for r in results if "correct" in r and r["confidence"] is not None]
    if not scored:
        return {"n": 0}
    row = client.conn.execute(query("eval_metrics"), {
        "confidence": [float(r["confidence"]) for r in scored], "correct": [bool(r["correct"]) for r in scored],
    }).fetchone()
    return row[0]


def summarise(client: Client, results: list[dict[str, Any]], cfg: EvalConfig,
              items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    scored = [r for r in results if "correct" in r and r["confidence"] is not None]
    summary: dict[str, Any] = {"run_label": cfg.run_label, "questions": len(items) if items else len(results),
                               "answered": len(results), "scored": len(scored),
                               "failed": sum(r["state"] != "succeeded" for r in results)}
    if not scored:
        return summary
    overall = metrics(client, scored)
    summary.update({k: overall.get(k) for k in ("accuracy", "accuracy_ci", "mean_confidence", "auroc", "auroc_ci",
                                                "ece", "ece_floor", "ece_floor_p95", "brier", "accuracy_at_coverage",
                                                "selective_gain", "oracle_gain", "selective_gain_share")})
    summary["accuracy_at_80"] = overall.get("accuracy_at_coverage")
    summary["calibrated_share"] = sum(bool(r["calibrated"]) for r in scored) / len(scored)
    datasets = sorted({r["dataset"] for r in scored if r.get("dataset")})
    if len(datasets) > 1:
        summary["by_dataset"] = {d: metrics(client, [r for r in scored if r.get("dataset") == d]) for d in datasets}
    per_signal = {}
    for name, higher_is_right in client.conn.execute(query("signal_orientations")).fetchall():
        pairs = []
        for r in scored:
            value = _rule_failed(r["signals"]) if name == "rule_failed" else r["signals"].get(name)
            if value is not None:
                # scored so that a high score means wrong (the AUROC of finding the wrong answers); jsonb gives
                # 1.0 back as the integer 1: make every score a float.
                value = float(value)
                pairs.append((-value if higher_is_right else value, not r["correct"]))
        if pairs:
            auroc = client.conn.execute(query("auroc"), {"scores": [p[0] for p in pairs],
                                                         "positives": [p[1] for p in pairs]}).fetchone()[0]
            per_signal[name] = {"n": len(pairs), "auroc": auroc}
    summary["signal_auroc"] = per_signal
    return summary


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _ci(point: Any, ci: Any) -> str:
    if point is None:
        return "n/a"
    return f"{point:.3f} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else f"{point:.3f}"


def _metric_rows(name: str, m: dict[str, Any]) -> str:
    if not m.get("n"):
        return f"| {name} | 0 | | | | | | |"
    return (f"| {name} | {m['n']} | {_ci(m.get('accuracy'), m.get('accuracy_ci'))} | "
            f"{_ci(m.get('auroc'), m.get('auroc_ci'))} | {_fmt(m.get('ece'))} (floor {_fmt(m.get('ece_floor'))}, "
            f"p95 {_fmt(m.get('ece_floor_p95'))}) | {_fmt(m.get('brier'))} | {_fmt(m.get('accuracy_at_coverage'))} | "
            f"{_fmt(m.get('selective_gain_share'))} |")


def write_report(cfg: EvalConfig, summary: dict[str, Any]) -> None:
    lines = [f"# Evaluation {summary['run_label']}", ""]
    if not summary.get("complete", True):
        lines += [f"**Incomplete**: {summary['stopped']}.", ""]
    lines += [f"Questions: {cfg.file} ({summary['questions']}; {summary['answered']} answered, {summary['scored']} "
              f"scored, {summary['failed']} failed). Model version: {cfg.model_version or 'active'}; memory "
              f"{'on' if cfg.memory else 'off'}; max_tokens {cfg.max_tokens}; greedy. Calibrated share: "
              f"{_fmt(summary.get('calibrated_share'))}; mean confidence {_fmt(summary.get('mean_confidence'))}.", "",
              "Bootstrap 95% intervals (1000 resamples); ECE beside the ECE a perfectly calibrated confidence would "
              "show at this n (mean and 95th percentile of 200 draws); selective gain: accuracy on the 80% most "
              "confident minus accuracy, as a share of the oracle's min(1, acc/0.8) - acc.", "",
              "| answers | n | accuracy | AUROC (wrong answers) | ECE | Brier | accuracy at 80% | share of oracle "
              "gain |",
              "|---|---|---|---|---|---|---|---|"]
    if summary.get("scored"):
        lines.append(_metric_rows("all", {**summary, "n": summary["scored"]}))
        for name, m in summary.get("by_dataset", {}).items():
            lines.append(_metric_rows(name, m))
    lines += ["", "AUROC for detecting wrong answers, each signal on its own (0.5 = no information):", "",
              "| signal | n | AUROC |", "|---|---|---|"]
    for name, v in summary.get("signal_auroc", {}).items():
        lines.append(f"| {name} | {v['n']} | {_fmt(v['auroc'])} |")
    if cfg.plot:
        lines += ["", f"![reliability diagram]({cfg.plot.name})"]
    cfg.report.write_text("\n".join(lines) + "\n")  # type: ignore[union-attr]


def plot_reliability(path: Path, results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in results if "correct" in r and r["confidence"] is not None]
    bins = [[] for _ in range(10)]
    for r in scored:
        bins[min(int(float(r["confidence"]) * 10), 9)].append(bool(r["correct"]))
    centers = [(i + 0.5) / 10 for i in range(10)]
    acc = [sum(b) / len(b) if b else 0 for b in bins]
    counts = [len(b) for b in bins]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(centers, acc, width=0.09, color="#4c72b0", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability ({summary.get('scored', 0)} answers, ECE {_fmt(summary.get('ece'))})")
    ax.legend(loc="upper left")
    ax2.bar(centers, counts, width=0.09, color="#dd8452")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("answers")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_with_worker(cfg: EvalConfig, inline_worker: str, worker_config: Any) -> dict[str, Any]:
    """Runs an evaluation through the app path; with no live worker for the version (inline_worker auto),
    or always, a worker runs in this process, follow-ups included (evaluation traffic gets critique and
    agreement, and the evaluation waits for them)."""
    from pgreflect.db import dsns
    from pgreflect.flows.ask import inline_worker_config
    from pgreflect.worker import InlineWorker, Worker

    read_items(cfg.file)  # a bad question file is refused before a model is loaded for it
    d = dsns()
    with Client(d.app, application_name="pgreflect-eval") as client:
        inline = None
        if inline_worker == "always" or (inline_worker == "auto" and client.live_workers(cfg.model_version) == 0):
            config = inline_worker_config(worker_config, cfg.model_version, followups=True)
            inline = InlineWorker(Worker(d.worker, config)).start()
        try:
            return run(cfg, client, abort=inline.failure if inline else None)
        finally:
            if inline is not None:
                inline.stop()
