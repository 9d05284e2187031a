"""Every prompt pgreflect itself writes to a model, in one place: what the model is asked about its own answers
(P(True), the critique), and the rephrasings the gate asks for. Apps' prompts never pass through here."""

from __future__ import annotations

from typing import Any

# The system prompt of a low-confidence answer given again with retrieved corrections as its examples
# (params.low_confidence = 'reanswer').
REANSWER_SYSTEM = ("The earlier exchanges are verified answers to similar questions. Use them as evidence "
                   "where they apply.")

# Asked after the answer, in the same conversation; P(yes) against P(no) is read from the next-token logits.
P_TRUE_QUESTION = "Is your answer above correct? Reply with only yes or no."

# The critique's JSON schema; the llama backend enforces it with a llama.cpp grammar, so the output always
# parses. Length limits keep a critique well inside its token budget (CRITIQUE_MAX_TOKENS).
CRITIQUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["correct", "partially_correct", "incorrect", "unsure"]},
        "issues": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string",
                             "enum": ["factual", "reasoning", "format", "incomplete", "unsafe", "other"]},
                    "severity": {"type": "string", "enum": ["low", "medium", "high"]},
                    "description": {"type": "string", "maxLength": 80},
                },
                "required": ["kind", "severity", "description"],
            },
        },
        "suggested_fix": {"type": "string", "maxLength": 120},
    },
    "required": ["verdict", "issues", "suggested_fix"],
}
CRITIQUE_MAX_TOKENS = 512
CRITIQUE_SYSTEM = ("You review answers strictly. Decide whether the answer to the question is correct, list "
                   "concrete problems, and suggest a fix. Reply in JSON.")


def critique_prompt(question: str, answer: str) -> str:
    return f"Question:\n{question}\n\nAnswer to review:\n{answer}\n\nYour review as JSON:"


# The gate asks the parent for a rewording of each corrected prompt (memory off, greedy): a candidate that
# learned the fact, not the wording, answers the rewording too (docs/improve.md, part a).
REPHRASE_SYSTEM = ("Rewrite the user's message as a new question with the same meaning, in different words. Keep "
                   "every name, number and option. Do not answer it. Reply with the rewritten question only.")
REPHRASE_MAX_TOKENS = 96
