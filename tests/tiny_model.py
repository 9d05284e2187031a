"""Builds a tiny random-weight Llama GGUF (2 layers, hidden 64) that reuses SmolLM2's tokenizer and chat
template: loads in ~0.1 s and decodes at ~1,500 tok/s, for tests of the real llama.cpp path that do not
care what the model says. Nothing large is committed: the file is built once per test session."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from pgreflect.models import PACKAGED, package_file

HIDDEN, LAYERS, HEADS, FF = 64, 2, 4, 128


def smollm2_path() -> Path:
    m = PACKAGED["smollm2-135m-instruct-q4_1"]
    return package_file(m.modules[0], m.relative_paths[0])


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    reader = gguf.GGUFReader(smollm2_path())
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(target), "llama")
    w.add_name("pgreflect-tiny-test")
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if len(field.types) > 1 else None
            w.add_key_value(key, field.contents(), field.types[0], sub)

    def mat(rows: int, cols: int, std: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * std).astype(np.float16)

    ones = np.ones(HIDDEN, dtype=np.float32)
    w.add_tensor("token_embd.weight", mat(vocab, HIDDEN, 1.0))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", mat(HIDDEN, HIDDEN, 0.1))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(FF, HIDDEN, 0.1))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(FF, HIDDEN, 0.1))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(HIDDEN, FF, 0.1))
    w.add_tensor("output_norm.weight", ones)
    # A large output scale makes the next-token distribution peaked, so log-probs differ from token to token.
    w.add_tensor("output.weight", mat(vocab, HIDDEN, 0.6))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return target
