"""A trainable transformers twin of a served GGUF, built once per GGUF sha256 and cached.

Why a plain model and not the one from_pretrained(gguf_file=...) returns: that one keeps a GGUF "quantizer"
(is_quantized) although its weights are dense fp32, so save_pretrained and training refuse it. The weights
are copied into a model built from the same config instead. The twin holds exactly the dequantized weights
llama.cpp serves, so an adapter trained on it applies to the GGUF.

Parity is checked once per base: the twin and llama.cpp must pick the same next token on a few rendered
prompts (tokens come from llama.cpp's tokenizer in both cases, see pgreflect.chat). The result is stored
beside the twin (parity.json) and a twin that fails it is not used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path

from pgreflect.paths import improve_dir

log = logging.getLogger("pgreflect.improve")

PARITY_PROMPTS = ("What is the capital of France?", "Add 17 and 25.", "Name a colour.")
TWIN_ERROR_EXIT = 3  # the trainer's exit status when no usable twin can be built


class TwinError(RuntimeError):
    pass


def twin_dir(sha256: str) -> Path:
    return improve_dir() / "twins" / sha256


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two workers never build the same twin at once
        yield


def ensure_twin(gguf_path: Path, sha256: str) -> Path:
    """The twin's folder (config.json, model.safetensors, parity.json); built when missing."""
    target = twin_dir(sha256)
    with _lock(target.with_name(target.name + ".lock")):
        if (target / "parity.json").exists():
            return _checked(target)
        t0 = time.perf_counter()
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        _build(Path(gguf_path), partial)
        parity = _parity(partial, Path(gguf_path))
        parity["build_s"] = round(time.perf_counter() - t0, 1)
        (partial / "parity.json").write_text(json.dumps(parity, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        log.info("built the training twin of %s in %.0f s (parity %s)", gguf_path, parity["build_s"], parity["ok"])
        return _checked(target)


def _checked(target: Path) -> Path:
    parity = json.loads((target / "parity.json").read_text())
    if not parity["ok"]:
        raise TwinError(f"the training twin in {target} does not match llama.cpp ({parity['checks']}); "
                        "this architecture cannot be fine-tuned here")
    return target


def _build(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    del loaded
    plain.save_pretrained(str(out))


def _parity(twin: Path, gguf_path: Path) -> dict:
    """Quantized matmuls in llama.cpp and fp32 in torch differ a little, so the top token may flip where two
    tokens are close; a wrong conversion (permuted heads, untied head, wrong rope) scrambles the whole
    distribution. Both logit vectors must correlate (Pearson >= 0.95) and llama.cpp's top token must be in
    the twin's top 5, on every prompt."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from pgreflect.chat import ChatRenderer

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, logits_all=False, verbose=False)
    model = AutoModelForCausalLM.from_pretrained(str(twin), dtype=torch.float32)
    model.eval()
    chat = ChatRenderer(llm)
    checks = []
    try:
        for prompt in PARITY_PROMPTS:
            tokens = chat.prompt_tokens([{"role": "user", "content": prompt}])
            llm.reset()
            llm.eval(tokens)
            ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            gguf_logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)
            with torch.no_grad():
                twin_logits = model(input_ids=torch.tensor([tokens])).logits[0, -1].double().numpy()
            top = int(np.argmax(gguf_logits))
            checks.append({"gguf_top": top, "twin_top5": [int(t) for t in np.argsort(-twin_logits)[:5]],
                           "correlation": round(float(np.corrcoef(gguf_logits, twin_logits)[0, 1]), 4)})
    finally:
        llm.close()
    ok = all(c["correlation"] >= 0.95 and c["gguf_top"] in c["twin_top5"] for c in checks)
    return {"ok": ok, "checks": checks, "gguf": str(gguf_path)}
