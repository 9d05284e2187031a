"""Which layer's hidden state should the probe read, and where: the answer's last token or the end of the
P(True) question?

The shipped probe (pgreflect.meta.probe) reads the final layer's state after the answer's last token, the one
state llama.cpp hands out for free during generation. Studies of larger models find middle layers carry more
about correctness than the last one, and the state at the end of a self-evaluation question ("Is your answer
above correct?") is the state the model judges its answer in. This bench measures both, on answers collected
through the served path (bench/calibration_lodo_bench.py --collect-only: the eval harness's answers, their
signals and labels; the answer texts in bench/results/lodo-<dataset>.jsonl).

Each answer is replayed (teacher forcing, one prefill per answer, no generation) through a second llama.cpp
context on the same model whose graph-evaluation callback copies each layer's output ("l_out-<i>") and the
final norm's ("result_norm") at the last position of the batch: once after the answer's tokens, once after the
P(True) question that follows it (the conversation as the served P(True) renders it). The states are kept in
~/.cache/pgreflect/bench/layer-states.npz (fp16; not in the repository).

Held out: each dataset, and MMLU's subjects in four groups (by a hash of the subject), so a probe is always
scored on subjects or tasks it was not fitted on. Report: for each layer and position, the probe alone fitted
on the other groups (pooled and averaged AUROC at three strengths: a screen); then for the final-layer state
the shipped probe uses and the screen's best states, the probe as the probe signal is fitted (strength by
inner leave-one-group-out) and as one more calibrator feature (the shipped calibrator's features, SQL fit),
with paired bootstrap intervals.

    .venv/bin/python bench/calibration_lodo_bench.py --collect-only --datasets mmlu,gsm8k   # 22 min + ~55 min
    .venv/bin/python bench/layer_probe_bench.py          # replays what was collected (even cut short), analyses
    .venv/bin/python bench/layer_probe_bench.py --analyse-only
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp._ggml
import numpy as np
import psycopg
from lodo_analysis import (
    ANSWERS,
    Fitter,
    auroc,
    auroc_ci,
    averaged,
    choose_c,
    informative,
    load,
    load_all,
    paired_auroc_diff,
    probe_as_feature,
    shipped_features,
)
from sklearn.linear_model import LogisticRegression

from pgreflect.backends.base import GenerationRequest
from pgreflect.meta import probe
from pgreflect.models import DEFAULT_MODEL, packaged_path
from pgreflect.prompts import P_TRUE_QUESTION

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cluster import pgreflect_database, start_cluster  # noqa: E402

CACHE = Path.home() / ".cache" / "pgreflect" / "bench" / "layer-states.npz"
RESULTS = HERE / "results" / "layer-probe.md"
POSITIONS = ("answer", "p_true")  # after the answer's last token; after the P(True) question
SCREEN_STRENGTHS = (1e-3, 1e-2, 1e-1)


class GgmlTensor(ctypes.Structure):
    """The head of ggml.h's struct ggml_tensor (ggml of llama-cpp-python 0.3.36), up to its name."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


_tensor_get = llama_cpp._ggml.libggml.ggml_backend_tensor_get
_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
_tensor_get.restype = None


class LayerTap:
    """A llama.cpp context on an already loaded model that copies every layer's output at the last position
    of each evaluated batch (the graph-evaluation callback llama.cpp's own cvector and imatrix tools use)."""

    def __init__(self, model: Any, n_layer: int, n_embd: int, n_ctx: int = 4096, n_batch: int = 512):
        self.n_layer, self.n_embd = n_layer, n_embd
        self.names = {f"l_out-{i}".encode(): i for i in range(n_layer)} | {b"result_norm": n_layer}
        self.last = np.zeros((n_layer + 1, n_embd), dtype=np.float32)
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._observe)  # kept referenced
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = len(os.sched_getaffinity(0))
        params.cb_eval, params.cb_eval_user_data = self._callback, None
        self.n_batch = n_batch
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the tap context")

    def _observe(self, pointer: int, ask: bool, _user: Any) -> bool:
        t = GgmlTensor.from_address(pointer)
        layer = self.names.get(t.name)
        if ask:
            return layer is not None
        # F32, one row per position of the batch (the last layer: per output position); the last row is wanted
        if layer is not None and t.type == 0 and t.ne[0] == self.n_embd:
            row = np.empty(self.n_embd, dtype=np.float32)
            _tensor_get(pointer, row.ctypes.data, (t.ne[1] - 1) * t.nb[1], self.n_embd * 4)
            self.last[layer] = row
        return True

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def truncate(self, keep: int) -> None:
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), -1, keep, -1)

    def eval(self, tokens: list[int]) -> np.ndarray:
        """Evaluates the tokens after what the context holds; each layer's state at the last one."""
        for i in range(0, len(tokens), self.n_batch):
            chunk = (llama_cpp.llama_token * len(tokens[i:i + self.n_batch]))(*tokens[i:i + self.n_batch])
            rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(chunk, len(chunk)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        return self.last.copy()

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)


def group_of(row: dict[str, Any]) -> str:
    """The held-out unit: the dataset, or for MMLU one of four groups of subjects."""
    if row["dataset"] == "mmlu":
        return f"mmlu subjects {int(hashlib.sha256(row['topic'].encode()).hexdigest(), 16) % 4}"
    return row["dataset"]


def collected(names: list[str]) -> list[dict[str, Any]]:
    """The answers of these datasets that the eval harness wrote with their text (bench/results/lodo-<name>.jsonl,
    from calibration_lodo_bench.py --collect-only, complete or cut short), with their question and, from the
    answers kept in the repository, their signals and label (greedy decoding answers the same: each answer's
    served log-prob mean is checked against the kept one)."""
    kept = {(r["dataset"], r["id"]): r for r in load_all(ANSWERS)}
    out = []
    for name in names:
        stem = HERE / "results" / f"lodo-{name}"
        if not stem.with_suffix(".jsonl").exists():
            raise SystemExit(f"no collected answers of {name} ({stem.with_suffix('.jsonl')}): run "
                             f"bench/calibration_lodo_bench.py --collect-only --datasets {name} first")
        asked = {q["id"]: q for q in load(stem.with_suffix(".questions.jsonl"))}
        for a in load(stem.with_suffix(".jsonl")):
            r = kept.get((name.replace("-", "_"), a["id"]))
            if a.get("answer") is None or r is None:
                continue
            same = (a["correct"] == r["correct"]
                    and abs(a["signals"]["logprob_mean"] - r["features"]["logprob_mean"]) < 1e-6)
            out.append({**r, "question": asked[a["id"]]["question"], "topic": asked[a["id"]].get("topic", ""),
                        "answer": a["answer"], "reproduced": same})
    return out


def replay(names: list[str]) -> float:
    """Each collected answer's states at both positions, into CACHE; the minutes it took."""
    from pgreflect.backends.llama import LlamaBackend

    started = time.time()
    answers = collected(names)
    backend = LlamaBackend(packaged_path(DEFAULT_MODEL))
    llm = backend.llm
    n_layer = llama_cpp.llama_model_n_layer(llm.model)
    tap = LayerTap(llm.model, n_layer, backend.n_embd)
    states = np.zeros((len(answers), len(POSITIONS), n_layer + 1, backend.n_embd), dtype=np.float16)
    drift: list[float] = []
    tokens_seen = 0
    try:
        for k, a in enumerate(answers):
            request = GenerationRequest(prompt=a["question"], system_prompt=None, params={"max_tokens": 16})
            messages = request.messages()
            answer_tokens = llm.tokenize(a["answer"].encode(), add_bos=False, special=False)
            answered = backend.prompt_tokens(messages) + answer_tokens
            judged = backend.prompt_tokens([*messages, {"role": "assistant", "content": a["answer"]},
                                            {"role": "user", "content": P_TRUE_QUESTION}])
            tap.clear()
            states[k, 0] = tap.eval(answered)
            shared = next((i for i, (x, y) in enumerate(zip(answered, judged, strict=False)) if x != y),
                          min(len(answered), len(judged)))
            tap.truncate(shared)
            states[k, 1] = tap.eval(judged[shared:])
            tokens_seen += len(answered) + len(judged) - shared
            # The tap against the served path: a few short answers generated again, the final-layer state served
            # with them (the one the shipped probe reads) beside the replayed one.
            if len(drift) < 10 and len(answer_tokens) <= 8:
                gen = backend.generate(request, threading.Event())
                if gen.text == a["answer"] and gen.state is not None:
                    served = np.array(gen.state)
                    drift.append(float(np.linalg.norm(states[k, 0, -1] - served) / np.linalg.norm(served)))
            if k % 50 == 49:
                print(f"{k + 1} answers replayed, {tokens_seen} tokens, {(time.time() - started) / 60:.1f} min",
                      flush=True)
    finally:
        tap.close()
        backend.close()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, states=states, drift=np.array(drift),
             rows=np.array([json.dumps({k: a[k] for k in ("dataset", "id", "topic", "correct", "features",
                                                          "reproduced")}) for a in answers]))
    return (time.time() - started) / 60


def fit_lbfgs(x: np.ndarray, y: np.ndarray, c: float) -> probe.Probe:
    """probe.fit_logistic's objective (C * summed log-loss + |w|^2 / 2 on standardised states, the intercept
    unpenalised) solved by L-BFGS: the same probe (logits within 1e-5 on 660 x 1,536 test data), 2-3x faster
    than its Newton steps there, which the thousands of fits here need. The bench fits every probe with it."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit((x - mu) / sd, y)
    weights = model.coef_[0] / sd
    return probe.Probe(weights, float(model.intercept_[0] - weights @ mu))


def _screen(x: np.ndarray, y: np.ndarray, ds: np.ndarray, c: float) -> tuple[float, float]:
    """Probe alone, leave-one-group-out at a fixed strength: pooled AUROC and the mean over informative held-out
    groups."""
    z = np.zeros(len(y))
    for d in sorted(set(ds)):
        z[ds == d] = probe.fit_logistic(x[ds != d], y[ds != d], c).logits(x[ds == d])
    per = [auroc(z[ds == d], y[ds == d]) for d in sorted(set(ds))
           if 10 <= y[ds == d].sum() <= (ds == d).sum() - 10]
    return auroc(z, y), float(np.mean(per))


def analyse() -> dict[str, Any]:
    probe.fit_logistic = fit_lbfgs
    saved = np.load(CACHE)
    states = saved["states"].astype(np.float64)
    rows = [json.loads(str(r)) for r in saved["rows"]]
    y = np.array([r["correct"] for r in rows])
    ds = np.array([group_of(r) for r in rows])
    drift = saved["drift"]
    n_layer = states.shape[2] - 1
    report: dict[str, Any] = {"n": len(rows), "n_layer": n_layer, "screen": {},
                              "groups": {g: int((ds == g).sum()) for g in sorted(set(ds))},
                              "reproduced": int(sum(r["reproduced"] for r in rows)),
                              "replay_vs_served": {"n": len(drift), "median": float(np.median(drift)),
                                                   "max": float(np.max(drift))}}
    for p, position in enumerate(POSITIONS):
        for layer in range(n_layer + 1):
            name = f"{position}/{'final norm' if layer == n_layer else layer}"
            report["screen"][name] = {str(c): _screen(states[:, p, layer], y, ds, c) for c in SCREEN_STRENGTHS}
            print(name, report["screen"][name], flush=True)
    # The probe as shipped reads the final norm's output after the answer; against it, the screen's best three
    # by averaged AUROC (whatever their strength: the full procedure below chooses its own).
    best = sorted(report["screen"], key=lambda k: -max(v[1] for v in report["screen"][k].values()))
    chosen = ["answer/final norm", *[k for k in best if k != "answer/final norm"][:3]]
    names = [n for n in shipped_features() if n != "agreement"]
    # Fitter.held_out holds out by "dataset": here, by group
    plain = [{**r, "dataset": g, "features": {**r["features"], "agreement": None}}
             for r, g in zip(rows, ds, strict=True)]
    cluster = start_cluster()
    try:
        with psycopg.connect(pgreflect_database(cluster), autocommit=True) as conn:
            fitter = Fitter(conn)
            base = fitter.held_out(plain, names)
            report["calibrator"] = _summary(fitter, base, y, ds)
            report["chosen"] = {}
            shipped_state = None
            for name in chosen:
                position, layer = name.split("/")
                x = states[:, POSITIONS.index(position), n_layer if layer == "final norm" else int(layer)]
                alone, with_probe = _probe_lodo(fitter, plain, names, x, y, ds)
                report["chosen"][name] = {
                    "alone": {**_summary(fitter, 1 / (1 + np.exp(-alone)), y, ds), "ci": auroc_ci(alone, y)},
                    "with_probe": _summary(fitter, with_probe, y, ds),
                    "gain": paired_auroc_diff(with_probe, base, y),
                    # against the calibrator with the probe on the state the shipped probe reads (listed first)
                    "vs_final_norm": paired_auroc_diff(with_probe, shipped_state, y) if shipped_state is not None
                    else None}
                shipped_state = with_probe if shipped_state is None else shipped_state
                print(name, report["chosen"][name], flush=True)
    finally:
        cluster.destroy()
    return report


def _probe_lodo(fitter: Fitter, rows: list[dict[str, Any]], names: list[str], x: np.ndarray, y: np.ndarray,
                ds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As lodo_analysis does for the shipped probe, with these states and groups: per held-out group, the strength
    chosen by leave-one-group-out inside the training groups, then the probe alone and as a calibrator feature."""
    with_state = [{**r, "state": s} for r, s in zip(rows, x, strict=True)]
    alone, calibrated = np.zeros(len(y)), np.zeros(len(y))
    for held in sorted(set(ds)):
        train = [r for r, d in zip(with_state, ds, strict=True) if d != held]
        test = [r for r, d in zip(with_state, ds, strict=True) if d == held]
        alone[ds == held], calibrated[ds == held] = probe_as_feature(fitter, train, test, names, choose_c(train))
    return alone, calibrated


def _summary(fitter: Fitter, conf: np.ndarray, y: np.ndarray, ds: np.ndarray) -> dict[str, Any]:
    per = fitter.per_dataset(conf, y, ds)
    return {"pooled": fitter.metrics(conf.tolist(), y.tolist()), **averaged(per),
            "per_dataset": {d: m["auroc"] for d, m in per.items() if informative(m)}}


def _diff(d: tuple[float, float, float] | None) -> str:
    return "" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"


def write_markdown(report: dict[str, Any], command: str, minutes: float | None) -> None:
    took = f"; replay {minutes:.0f} min" if minutes else ""
    lines = [
        "# Hidden-state probe: which layer, which position", "",
        f"Command: `{command}`{took}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2 cores; default model "
        f"({report['n_layer']} layers); {report['n']} answers collected through the served path "
        f"({report['reproduced']} of them identical to the answers kept in the repository: same label, same "
        f"log-prob mean), replayed with teacher forcing (the replayed final-layer state after the answer against "
        f"the one served with it, short answers generated again: median relative difference "
        f"{report['replay_vs_served']['median']:.4f}, max {report['replay_vs_served']['max']:.4f}, "
        f"n = {report['replay_vs_served']['n']}). Held out in turn: "
        + ", ".join(f"{g} ({n})" for g, n in report["groups"].items())
        + ". Positions: \"answer\" = after the answer's last token (where the shipped probe reads), \"p_true\" = after "
        "the P(True) question that follows the answer. Layer i = the output of transformer block i (0-based); "
        "\"final norm\" = the final layer after the output norm (the state the shipped probe uses).", "",
        "## Screen: the probe alone, leave-one-group-out, fixed strengths", "",
        "Pooled AUROC / AUROC averaged over the informative held-out groups, per strength C. A screen: picking the "
        "best cell reads the held-out data, so the chosen rows below refit with the strength chosen inside the "
        "training groups.", "",
        "| position/layer | " + " | ".join(f"C={c}" for c in SCREEN_STRENGTHS) + " |",
        "|---|" + "---|" * len(SCREEN_STRENGTHS)]
    for name, cells in report["screen"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v[0]:.3f} / {v[1]:.3f}" for v in cells.values()) + " |")
    cal = report["calibrator"]
    lines += ["", "## Chosen states, as the probe is fitted", "",
              f"The calibrator without a probe (the shipped calibrator's features, agreement off, on these answers): "
              f"pooled AUROC {cal['pooled']['auroc']:.3f}, ECE {cal['pooled']['ece']:.3f} (floor "
              f"{cal['pooled']['ece_floor']:.3f}); averaged AUROC {cal['auroc']:.3f}, ECE gap {cal['ece_gap']:+.3f}, "
              f"share {cal['share']:.0%}.", "",
              "| position/layer | probe alone: pooled AUROC [95%] | alone: averaged | calibrator + probe: pooled AUROC "
              "| averaged AUROC | averaged ECE gap | share | + probe minus without, pooled AUROC [95%] "
              "| minus + probe on the final norm after the answer [95%] |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["chosen"].items():
        a, w, g = m["alone"], m["with_probe"], m["gain"]
        lines.append(f"| {name} | {a['pooled']['auroc']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] | {a['auroc']:.3f} "
                     f"| {w['pooled']['auroc']:.3f} | {w['auroc']:.3f} | {w['ece_gap']:+.3f} | {w['share']:.0%} "
                     f"| {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}] | {_diff(m['vs_final_norm'])} |")
    lines += ["", "Per informative held-out group, AUROC (calibrator / + probe at each chosen state):", "",
              "| held out | calibrator | " + " | ".join(report["chosen"]) + " |",
              "|---|---|" + "---|" * len(report["chosen"])]
    for d, v in cal["per_dataset"].items():
        cells = [f"{m['with_probe']['per_dataset'][d]:.3f}" for m in report["chosen"].values()]
        lines.append(f"| {d} | {v:.3f} | " + " | ".join(cells) + " |")
    RESULTS.write_text("\n".join(lines) + "\n")
    RESULTS.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="mmlu,gsm8k",
                    help="whose collected answers to replay (bench/results/lodo-<name>.jsonl)")
    ap.add_argument("--analyse-only", action="store_true")
    args = ap.parse_args()
    minutes = None if args.analyse_only else replay(args.datasets.split(","))
    report = analyse()
    write_markdown(report, " ".join([".venv/bin/python bench/layer_probe_bench.py", *sys.argv[1:]]), minutes)
    print(f"written {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
