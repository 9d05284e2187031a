"""Fitting training into memory: the decision rule on exact numbers, the estimate on a real model's shape,
and the trainer's answer-only loss against the model's own loss."""

from __future__ import annotations

import pytest

from pgreflect.improve.memory_guard import Estimate, decide
from pgreflect.improve.train import IGNORE, answer_loss

# A 9 GB run that needs 5 GB with gradient checkpointing (the shape of the default model's numbers).
PLAIN = Estimate(9000.0, 6800.0, 1300.0, 0.0, 800, 10, False)
CHECKPOINTED = Estimate(5000.0, 6800.0, 300.0, 0.0, 800, 10, True)


def _decide(available: float, serving: float = 2000.0, **policy: object):
    full = {"reserve_mb": 1000.0, "gradient_checkpointing": "auto", "pause_serving": "auto", **policy}
    return decide(full, lambda ckpt: CHECKPOINTED if ckpt else PLAIN, available, serving)


@pytest.mark.parametrize(("available", "decision", "checkpointing"), [
    (10_500, "alongside", False),  # 9000 + 1000 reserve fits
    (7_000, "checkpointing", True),  # only 5000 + 1000 fits
    (5_000, "paused_serving", True),  # 5000 + 1000 fits with the 2000 the models hold
    (3_000, "refused", True),  # not even then
])
def test_the_cheapest_way_that_fits_is_chosen(available: float, decision: str, checkpointing: bool) -> None:
    d = _decide(available)
    assert (d.decision, d.gradient_checkpointing, d.pause_serving) == (decision, checkpointing,
                                                                       decision == "paused_serving")
    assert f"about {d.estimate.total_mb:.0f} MB" in d.detail and f"{available} MB available" in d.detail


def test_settings_narrow_the_choices() -> None:
    paused = _decide(7_000, serving=3_500, gradient_checkpointing="off")  # 9000 <= 7000 - 1000 + 3500
    assert (paused.decision, paused.gradient_checkpointing) == ("paused_serving", False)
    assert _decide(7_000, gradient_checkpointing="off").decision == "refused"  # 9000 > 7000 - 1000 + 2000
    refused = _decide(7_000, serving=3_500, gradient_checkpointing="off", pause_serving="never")
    assert refused.decision == "refused" and "set finetune_pause_serving to auto" in refused.detail
    assert "lower finetune_batch_size or finetune_max_seq_len" in refused.detail
    # checkpointing "on" is the setting, not a fallback: recorded as beside serving, with checkpointing
    on = _decide(10_500, gradient_checkpointing="on")
    assert (on.decision, on.gradient_checkpointing) == ("alongside", True)
    # always: serving stops for every run, and then without checkpointing when that fits
    always = _decide(10_500, pause_serving="always")
    assert (always.decision, always.pause_serving, always.gradient_checkpointing) == ("paused_serving", True, False)
    # nothing to pause (no models loaded): refused rather than "paused"
    assert _decide(5_000, serving=0.0).decision == "refused"


def test_an_earlier_attempts_peak_raises_the_estimate_for_the_same_mode() -> None:
    # an earlier attempt without checkpointing reached 11 GB: that mode no longer fits in 10.5 GB
    d = _decide(10_500, seen_peak_mb=11_000, seen_with_checkpointing=False)
    assert (d.decision, d.gradient_checkpointing) == ("checkpointing", True)
    assert _decide(10_500, seen_peak_mb=11_000, seen_with_checkpointing=True).decision == "alongside"


def test_answer_loss_is_the_models_own_loss() -> None:
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                 task_type="CAUSAL_LM"))
    ids = torch.randint(0, 300, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # a padded row
    labels = torch.full_like(ids, IGNORE)
    labels[0, 12:], labels[1, 9:15], labels[2, 3:] = ids[0, 12:], ids[1, 9:15], ids[2, 3:]
    trained = [p for p in model.parameters() if p.requires_grad]

    def grads(loss):  # the adapter's gradients under this loss (B starts at zero, so A's are zero)
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in trained]

    own = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    own_grads = grads(own)
    ours = answer_loss(model, ids, labels, mask)
    assert float(ours) == pytest.approx(float(own), rel=1e-5)
    our_grads = grads(ours)
    assert any(float(g.abs().sum()) > 0 for g in own_grads)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(own_grads, our_grads, strict=True))
