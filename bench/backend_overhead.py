"""The generation loop alone: LlamaBackend.generate (every per-token signal: log-probabilities, option
logits, the hidden state) against Llama.create_chat_completion, two contexts on the same GGUF in one process,
the same prompts alternating, greedy. llama.cpp's own counters (llama_perf_context) split each call into the
model's evaluation and the Python around it, so a slower loop shows up as Python time, not as noise.

    .venv/bin/python bench/backend_overhead.py [--prompts short|speed] [--rounds 2] [--max-tokens 16]

Results (markdown) go to stdout and bench/results/backend-overhead[-speed].md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llama_cpp  # noqa: E402
from inference_overhead import PROMPTS, SHORT_PROMPTS, ratio_interval  # noqa: E402

from pgreflect.backends.base import GenerationRequest  # noqa: E402
from pgreflect.backends.llama import LlamaBackend  # noqa: E402
from pgreflect.models import DEFAULT_MODEL, packaged_path  # noqa: E402


def evaluation_ms(ctx: llama_cpp.llama_context_p) -> float:
    data = llama_cpp.llama_perf_context(ctx)
    return data.t_p_eval_ms + data.t_eval_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="short", choices=["short", "speed"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    model = str(packaged_path(DEFAULT_MODEL))
    direct = llama_cpp.Llama(model_path=model, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                             verbose=False)
    backend = LlamaBackend(model, n_ctx=4096, n_threads=args.threads)
    params = {"max_tokens": args.max_tokens, "temperature": 0}
    direct.create_chat_completion([{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
    backend.generate(GenerationRequest("Hello", None, params, (), ()), threading.Event())

    pairs: list[tuple[float, float, float, float]] = []
    python_ms: dict[str, list[float]] = {"direct": [], "backend": []}
    same = 0
    for _ in range(args.rounds):
        for prompt in SHORT_PROMPTS if args.prompts == "short" else PROMPTS:
            llama_cpp.llama_perf_context_reset(direct.ctx)
            t0 = time.perf_counter()
            out = direct.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                                                temperature=0)
            dt = time.perf_counter() - t0
            python_ms["direct"].append(dt * 1000 - evaluation_ms(direct.ctx))
            llama_cpp.llama_perf_context_reset(backend.llm.ctx)
            t0 = time.perf_counter()
            gen = backend.generate(GenerationRequest(prompt, None, params, (), ()), threading.Event())
            bt = time.perf_counter() - t0
            python_ms["backend"].append(bt * 1000 - evaluation_ms(backend.llm.ctx))
            same += gen.text == out["choices"][0]["message"]["content"]
            pairs.append((out["usage"]["completion_tokens"], dt, len(gen.token_ids), bt))

    d_tokens, d_time = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    b_tokens, b_time = sum(p[2] for p in pairs), sum(p[3] for p in pairs)
    low, high = ratio_interval(pairs)
    text = "\n".join([
        f"Command: `.venv/bin/python bench/backend_overhead.py --prompts {args.prompts} --rounds {args.rounds} "
        f"--max-tokens {args.max_tokens}` (model {Path(model).name}, {args.threads} threads)  ",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(pairs)} prompt pairs, alternating; "
        f"the same text from both on {same} of {len(pairs)}.",
        "",
        "| path | tokens | seconds | tokens/s | Python around the model, median ms per call |",
        "|---|---|---|---|---|",
        f"| llama-cpp-python create_chat_completion | {d_tokens} | {d_time:.1f} | {d_tokens / d_time:.2f} | "
        f"{statistics.median(python_ms['direct']):.1f} |",
        f"| LlamaBackend.generate (every per-token signal) | {b_tokens} | {b_time:.1f} | {b_tokens / b_time:.2f} | "
        f"{statistics.median(python_ms['backend']):.1f} |",
        "",
        f"Ratio backend / direct: {(b_tokens / b_time) / (d_tokens / d_time):.3f} (bootstrap 95% over the pairs "
        f"[{low:.3f}, {high:.3f}]).",
    ]) + "\n"
    print(text)
    suffix = "" if args.prompts == "short" else "-speed"
    (HERE / "results" / f"backend-overhead{suffix}.md").write_text(text)


if __name__ == "__main__":
    main()
