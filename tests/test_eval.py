"""The evaluation harness end to end (tiny model), the scoring normalisers and the dataset loaders."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from pgreflect import datasets
from pgreflect.keys import Keyring
from pgreflect.scoring import extract_choice, extract_number, is_correct, kind_of, normalise_text, stated_answer

from conftest import Database
from helpers import client, drain


@pytest.mark.parametrize(("answer", "reference", "expected"), [
    ("The answer is 18.", "18", True),
    ("She makes 9 * 2 = $18 every day.\n18", "18", True),
    ("1,000 apples", "1000", True),
    ("It is 17", "18", False),
    ("B", "B", True),
    ("(C) because", "C", True),
    ("The correct answer is D.", "D", True),
    ("A. Paris", "B", False),
    ("1. Subtract one day: 11/12/2002\n\nTherefore, the correct answer is \\boxed{C}.", "C", True),
    ("At first \\boxed{A}, but checking again: \\boxed{(B)}", "B", True),  # the last box is the answer
    ("The answer is: **B**", "B", True),
    ("Paris", "paris", True),
    ("The capital is Paris.", "Paris", True),
    ("Lyon", "Paris", False),
    ("", "Paris", False),
])
def test_scoring(answer: str, reference: str, expected: bool) -> None:
    assert is_correct(answer, reference) is expected


def test_normalisers() -> None:
    assert kind_of("42") == "number" and kind_of("C") == "choice" and kind_of("New York") == "text"
    assert extract_number("about -3.5 degrees") == -3.5
    assert extract_choice("I think the answer is b") == "B"
    assert normalise_text("The  Eiffel Tower!") == "eiffel tower"


@pytest.mark.parametrize("answer, stated", [
    ("She pays 3 * 6 = 18 dollars, so \\boxed{18}.", "18"),
    ("First \\boxed{A}, then on reflection \\boxed{\\text{(B)}}", "(B)"),  # the last box, without LaTeX text
    ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("\\boxed{7} and then \\boxed{8", "7"),  # a box cut off: the last closed one
    ("The total is 10 + 8. The answer is $18.", "18"),
    ("Thus the final answer is (C) because 3 > 2", "C"),
    ("Natalia sold 48 clips.\n#### 1,000", "1,000"),
    ("B is correct since the others fail", "B"),
    ("Let us consider option A first, then option B", None),  # options named on the way state nothing
    ("A good question; the answer is complicated", None),
    ("Step 1: 48 / 2 = 24. Step 2: 48 + 24 =", None),  # cut off before its end
])
def test_stated_answer(answer: str, stated: str | None) -> None:
    assert stated_answer(answer) == stated


def test_dataset_loaders_and_fixed_split() -> None:
    gsm = list(datasets.items("gsm8k"))
    mmlu = list(datasets.items("mmlu"))
    assert len(gsm) == 1319 and len(mmlu) == 14044  # counted in the pinned packages
    assert gsm[0]["answer"] == "18" and gsm[0]["question"].endswith(datasets.NUMBER_INSTRUCTION)
    assert mmlu[0]["answer"] in "ABCD" and "\nA. " in mmlu[0]["question"]
    share = sum(it["split"] == "heldout" for it in mmlu) / len(mmlu)
    assert 0.18 < share < 0.22
    # The split is a pure function of the id: recomputing it reproduces every stored item's split.
    assert all(datasets.split_of("mmlu", it["id"]) == it["split"] for it in mmlu[:500])
    sample = datasets.select("mmlu", "heldout", 50)
    assert len(sample) == 50 and all(it["split"] == "heldout" for it in sample)
    assert len({it.get("topic") for it in sample}) > 10  # the limit samples across subjects


def test_bigbench_examples_become_items_of_each_kind() -> None:
    """Multiple choice (options shuffled by the id: the files list the right one first), numbers (the digits
    kept, the spelled-out target dropped), short text (every target accepted)."""
    choice = {"input": "Yesterday was 04/30/2021. Today?", "target_scores": {"05/01/2021": 1, "04/29/2021": 0,
                                                                             "05/09/2021": 0, "06/12/2021": 0}}
    shuffled = [datasets._bigbench_item(f"bb-x-{i:04d}", choice) for i in range(8)]
    for item in shuffled:
        lines = dict(line.split(". ", 1) for line in item["question"].splitlines()[1:5])
        assert lines[item["answer"]] == "05/01/2021"
        assert item["question"].endswith(datasets.MC_INSTRUCTION)
    assert len({it["answer"] for it in shuffled}) > 1  # the right option is not always first
    assert shuffled[0] == datasets._bigbench_item("bb-x-0000", choice)  # and the order is fixed
    count = datasets._bigbench_item("c", {"input": "How many?", "target": ["three", "3"]})
    assert count["answer"] == "3" and "aliases" not in count
    text = datasets._bigbench_item("t", {"input": "The genre of X is", "target": "['comedy', 'parody']"})
    assert text["answer"] == "comedy" and text["aliases"] == ["parody"]
    assert is_correct("It is a parody.", text["answer"], text["aliases"])
    assert not is_correct("It is rock.", text["answer"], text["aliases"])
    # a task whose input is no question alone becomes one through its template (the input's own whitespace dropped)
    plural = datasets._bigbench_item("p", {"input": " ability\n", "target": "abilities"},
                                     datasets.BIGBENCH_TEMPLATES["bb-plural"])
    assert plural["question"] == 'What is the plural of "ability"?\n' + datasets.COMPLETE_INSTRUCTION
    assert plural["answer"] == "abilities" and is_correct("There are two abilities.", plural["answer"])


def _bigbench_copy(root, tasks) -> None:
    """A BIG-bench checkout's layout with one example per task (its input names the task)."""
    for name in tasks:
        task = root / "bigbench" / "benchmark_tasks" / datasets.BIGBENCH_TASKS[name] / "task.json"
        task.parent.mkdir(parents=True)
        task.write_text(json.dumps({"examples": [{"input": f"{name}: how many?", "target": ["one", "1"]}]}))


def test_bigbench_tasks_come_from_a_local_copy(tmp_path, monkeypatch) -> None:
    """The package index may stop serving the bigbench sdist: its task files are then read from a local copy,
    the sdist itself, a checkout, or the benchmark_tasks folder; a copy that lacks tasks is refused by name and
    nothing of it is kept."""
    import tarfile

    checkout = tmp_path / "BIG-bench"
    _bigbench_copy(checkout, datasets.BIGBENCH_TASKS)
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(checkout / "bigbench", arcname="bigbench-1.0.0/bigbench")
    for source in (sdist, checkout, checkout / "bigbench" / "benchmark_tasks"):
        monkeypatch.setenv("PGREFLECT_DATASETS_DIR", str(tmp_path / f"cache-{source.name}"))
        monkeypatch.setenv(datasets.BIGBENCH_SOURCE_ENV, str(source))
        (item,) = datasets.items("bb-context-qa")
        assert "bb-context-qa: how many?" in item["question"] and item["answer"] == "1"
        (item,) = datasets.items("bb-color-rgb")  # the second time from the cache, whatever the source says
        assert "bb-color-rgb: how many?" in item["question"]
    partial = tmp_path / "partial"
    _bigbench_copy(partial, ["bb-plural", "bb-wikidata"])
    monkeypatch.setenv("PGREFLECT_DATASETS_DIR", str(tmp_path / "cache-partial"))
    monkeypatch.setenv(datasets.BIGBENCH_SOURCE_ENV, str(partial))
    with pytest.raises(datasets.DatasetUnavailable, match=r"bb-color-rgb, .*bb-social-iqa") as refused:
        datasets.fetch_bigbench()
    assert "bb-plural" not in str(refused.value) and not (tmp_path / "cache-partial").exists()
    monkeypatch.setenv(datasets.BIGBENCH_SOURCE_ENV, str(tmp_path / "nothing-here"))
    with pytest.raises(datasets.DatasetUnavailable, match=r"neither a \.tar\.gz nor a folder"):
        datasets.fetch_bigbench()


def test_bigbench_that_pip_cannot_fetch_says_how_to_provide_it(tmp_path, monkeypatch, capsys) -> None:
    from pgreflect import cli

    monkeypatch.setenv("PGREFLECT_DATASETS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(datasets.BIGBENCH_SOURCE_ENV, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a real pip that finds no bigbench, as when the index drops it
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(datasets.DatasetUnavailable, match=f"No matching distribution.*{datasets.BIGBENCH_SOURCE_ENV}"):
        datasets.fetch_bigbench()
    assert cli.main(["datasets", "export", "bb-plural", "--out", str(tmp_path / "q.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: BIG-bench's task files are not in") and "Traceback" not in err
    assert not (tmp_path / "q.jsonl").exists()


def test_eval_items_may_carry_aliases(tmp_path) -> None:
    from pgreflect.errors import InvalidInput
    from pgreflect.evaluate import read_items

    good = tmp_path / "good.jsonl"
    good.write_text('{"id": 1, "question": "q", "answer": "a", "aliases": ["b", 3]}\n')
    assert read_items(good)[0]["aliases"] == ["b", "3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q", "answer": "a", "aliases": "b"}\n')
    with pytest.raises(InvalidInput, match="aliases"):
        read_items(bad)


def _cli(db: Database, keyring: Keyring, *args: str) -> subprocess.CompletedProcess:
    # P(True) after every answer (the tiny model's are a few tokens), so that the report has its row.
    env = {**db.env(keyring), "PGREFLECT_P_TRUE_MIN_TOKENS": "0"}
    return subprocess.run([sys.executable, "-m", "pgreflect.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_eval_harness_end_to_end(db: Database, keyring: Keyring, tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in [
        {"id": "a", "question": "What is 2 + 2?", "answer": "4"},
        {"id": "b", "question": "Pick one: A. yes B. no. Answer with only the letter.", "answer": "A"},
        {"id": "c", "question": "Say something.", "answer": "Paris"},
        {"id": "d", "question": "No reference for this one."},
    ]) + "\n")
    out, report, plot = tmp_path / "r.jsonl", tmp_path / "report.md", tmp_path / "rel.png"
    # A results file left by the same run label against another database (same request ids from 1) must not
    # stop this one from labelling its answers: whether an answer is labelled is read from the database.
    out.write_text("".join(json.dumps({"id": i, "run_label": "t1", "request_id": n, "correct": True}) + "\n"
                           for n, i in enumerate("abc", 1)))
    args = ["eval", "--file", str(questions), "--out", str(out), "--report", str(report), "--plot", str(plot),
            "--model-version", "tiny", "--max-tokens", "8", "--run-label", "t1"]
    done = _cli(db, keyring, *args)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in results] == ["a", "b", "c", "d"]
    for r in results:
        assert {"id", "answer", "confidence", "signals"} <= r.keys() and 0 <= r["confidence"] <= 1
        assert "p_true" in r["signals"] and "logprob_mean" in r["signals"]
    assert all("correct" in r for r in results[:3]) and "correct" not in results[3]
    summary = json.loads(done.stdout.splitlines()[0])
    assert summary["scored"] == 3 and summary["questions"] == 4
    text = report.read_text()
    assert "| all | 3 |" in text and "floor" in text and "| p_true |" in text and "Incomplete" not in text
    assert summary["complete"] and len(summary["accuracy_ci"]) == 2 and summary["ece_floor"] is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with db.admin() as conn:
        labels = conn.execute("SELECT count(*) FROM reflect.feedback WHERE source = 'ground_truth'").fetchone()[0]
        callers = conn.execute("SELECT DISTINCT caller, submitted_by FROM reflect.requests").fetchall()
    assert labels == 3 and callers == [("pgreflect-eval", "pgreflect_app")]  # the public path, no side door
    # Re-running the same run label resumes: no new requests, no second label.
    assert _cli(db, keyring, *args).returncode == 0
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 4
    assert db.scalar("SELECT count(*) FROM reflect.feedback WHERE source = 'ground_truth'") == 3


def test_eval_rejects_a_bad_file(db: Database, keyring: Keyring, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    done = _cli(db, keyring, "eval", "--file", str(bad), "--out", str(tmp_path / "o.jsonl"))
    assert done.returncode == 2 and 'needs "id" and a string "question"' in done.stderr
    assert db.scalar("SELECT count(*) FROM reflect.requests") == 0


def test_datasets_export_stores_the_split(db: Database, keyring: Keyring, tmp_path) -> None:
    out = tmp_path / "mmlu.jsonl"
    done = _cli(db, keyring, "datasets", "export", "mmlu", "--split", "heldout", "--limit", "20", "--out", str(out))
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(items) == 20
    assert db.scalar("SELECT count(*) FROM reflect.eval_items WHERE split = 'heldout'") == 20
    again = _cli(db, keyring, "datasets", "export", "mmlu", "--split", "heldout", "--limit", "20", "--out", str(out))
    assert "0 new" in again.stdout


def test_summary_handles_signals_that_jsonb_returns_as_integers(db: Database, keyring: Keyring) -> None:
    """jsonb gives 1.0 back as the integer 1; mixed ints and floats in one array used to fail to dump. Run
    against the real metric functions in the database."""
    from pgreflect.evaluate import EvalConfig, summarise

    results = [{"correct": True, "confidence": 0.9, "calibrated": False, "state": "succeeded",
                "signals": {"agreement": 1, "p_true": 1, "rule_empty": 0}},
               {"correct": False, "confidence": 0.2, "calibrated": False, "state": "succeeded",
                "signals": {"agreement": 0.333, "p_true": 0.25, "rule_empty": 1.0}}]
    with client(db, keyring) as c:
        summary = summarise(c, results, EvalConfig(file=None, out=None))  # type: ignore[arg-type]
    assert set(summary["signal_auroc"]) == {"agreement", "p_true", "rule_failed"}
    assert summary["signal_auroc"]["p_true"]["auroc"] == 1.0  # the wrong answer has the lower P(True)
    assert summary["auroc"] == 1.0 and summary["accuracy"] == 0.5


def test_an_evaluation_that_times_out_keeps_what_was_answered_and_resumes(db: Database, keyring: Keyring,
                                                                         tmp_path) -> None:
    """Results are written as they arrive: a timeout keeps the answered ones (exit status 3, report marked
    incomplete), and the same run label resumes without asking or labelling anything twice."""
    qs = [{"id": str(i), "question": f"What is {i} + {i}?", "answer": str(2 * i), "dataset": "sums"}
          for i in range(1, 5)]
    first, whole = tmp_path / "first.jsonl", tmp_path / "whole.jsonl"
    first.write_text("".join(json.dumps(q) + "\n" for q in qs[:2]))
    whole.write_text("".join(json.dumps(q) + "\n" for q in qs))
    out, report = tmp_path / "r.jsonl", tmp_path / "report.md"
    common = ["--out", str(out), "--report", str(report), "--model-version", "tiny", "--max-tokens", "4",
              "--run-label", "long"]
    assert _cli(db, keyring, "eval", "--file", str(first), *common).returncode == 0
    # No worker and a short timeout: the two answered before are kept, the two new ones are not waited for.
    done = _cli(db, keyring, "eval", "--file", str(whole), *common, "--inline-worker", "never", "--timeout", "2")
    assert done.returncode == 3 and "2 of 4 answered and kept" in done.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "2"]
    summary = json.loads(done.stdout.splitlines()[0])
    assert (summary["complete"], summary["answered"], summary["questions"]) == (False, 2, 4)
    assert "**Incomplete**" in report.read_text() and "--run-label long" in report.read_text()
    labels = "SELECT count(*) FROM reflect.feedback WHERE source = 'ground_truth'"
    assert db.scalar(labels) == 2  # the two kept were not labelled again
    done = _cli(db, keyring, "eval", "--file", str(whole), *common)
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 4
    assert db.scalar(labels) == 4 and db.scalar("SELECT count(*) FROM reflect.requests") == 4
    with psycopg.connect(db.dsn("analyst"), autocommit=True) as conn:
        n, metrics = conn.execute("SELECT n, metrics FROM reflect.eval_results WHERE run_label = 'long'").fetchone()
    assert n == 4 and metrics["n"] == 4 and len(metrics["accuracy_ci"]) == 2


@pytest.mark.parametrize("stop_at", [None, 3])
def test_an_evaluation_labels_its_answers_when_it_stops_waiting_for_them(
        db: Database, keyring: Keyring, tmp_path, monkeypatch: pytest.MonkeyPatch, stop_at: int | None) -> None:
    """No verdict is recorded while the run still reads answers (labels feed the version's refits, which would
    score the rest of the run), and every verdict read is recorded when it stops: all answered, or stopped."""
    from pgreflect import evaluate

    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"id": str(i), "question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                          for i in range(1, 5)))
    labels = "SELECT count(*) FROM reflect.feedback WHERE source = 'ground_truth'"
    seen: list[int] = []

    def finished(c, rid, deadline, abort):  # as evaluate._finished, with every answer in and a look at labels
        drain(db, keyring, memory="off")
        seen.append(db.scalar(labels))
        if len(seen) == stop_at:
            raise RuntimeError("the worker went away")
        return c.get(rid)

    monkeypatch.setattr(evaluate, "_finished", finished)
    cfg = evaluate.EvalConfig(file=qs, out=tmp_path / "r.jsonl", model_version="tiny", max_tokens=4)
    with client(db, keyring) as c:
        if stop_at is None:
            assert evaluate.run(cfg, c, progress=False)["labelled"] == 4
        else:
            with pytest.raises(RuntimeError, match="went away"):
                evaluate.run(cfg, c, progress=False)
    assert seen == [0] * len(seen) and len(seen) == (stop_at or 4)
    assert db.scalar(labels) == (stop_at - 1 if stop_at else 4)  # the answers read before it stopped


def test_an_evaluation_that_records_no_labels_measures_only(db: Database, keyring: Keyring, tmp_path) -> None:
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"id": str(i), "question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                          for i in range(1, 3)))
    done = _cli(db, keyring, "eval", "--file", str(qs), "--out", str(tmp_path / "r.jsonl"), "--model-version", "tiny",
                "--max-tokens", "4", "--record-labels", "off")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[0])
    assert summary["scored"] == 2 and summary["labelled"] == 0 and summary["accuracy"] is not None
    assert db.scalar("SELECT count(*) FROM reflect.feedback") == 0


def test_eval_metrics_match_reference_implementations(db: Database) -> None:
    """reflect.eval_metrics_v1 against scikit-learn's AUROC, scipy's percentile bootstrap, a numpy simulation
    of the ECE noise floor and the selective-gain definition."""
    import numpy as np
    from scipy.stats import bootstrap
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    conf = rng.uniform(0.05, 0.95, 400)
    correct = rng.uniform(size=400) < conf ** 1.3  # informative, a little overconfident
    m = db.scalar("SELECT reflect.eval_metrics_v1(%s::float8[], %s::bool[])", (conf.tolist(), correct.tolist()))
    assert m["n"] == 400 and m["accuracy"] == pytest.approx(correct.mean())
    assert m["auroc"] == pytest.approx(roc_auc_score(~correct, 1 - conf), abs=1e-9)
    acc_ci = bootstrap((correct.astype(float),), np.mean, n_resamples=4000, method="percentile", random_state=1)
    assert m["accuracy_ci"] == pytest.approx([acc_ci.confidence_interval.low, acc_ci.confidence_interval.high],
                                             abs=0.01)
    auc_ci = bootstrap((conf, correct), lambda c, y: roc_auc_score(y < 0.5, 1 - c), paired=True, vectorized=False,
                       n_resamples=2000, method="percentile", random_state=1)
    assert m["auroc_ci"] == pytest.approx([auc_ci.confidence_interval.low, auc_ci.confidence_interval.high],
                                          abs=0.015)

    def ece(c: np.ndarray, y: np.ndarray) -> float:
        bins = np.minimum((c * 10).astype(int), 9)
        return sum(abs(c[bins == b].sum() - y[bins == b].sum()) for b in range(10)) / len(c)

    assert m["ece"] == pytest.approx(ece(conf, correct))
    floor = [ece(conf, rng.uniform(size=400) < conf) for _ in range(2000)]
    assert m["ece_floor"] == pytest.approx(np.mean(floor), abs=0.004)
    assert m["ece_floor_p95"] == pytest.approx(np.quantile(floor, 0.95), abs=0.01)
    top = np.argsort(-conf, kind="stable")[: int(np.ceil(0.8 * 400))]
    gain = correct[top].mean() - correct.mean()
    assert m["selective_gain"] == pytest.approx(gain)
    assert m["selective_gain_share"] == pytest.approx(gain / (min(1, correct.mean() / 0.8) - correct.mean()))
