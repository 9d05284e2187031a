"""How a conversation becomes tokens, in one place: the llama backend renders prompts with it and the trainer
renders training examples with it, so a model is trained on exactly the text it is later asked with."""

from __future__ import annotations

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

# Used when a GGUF carries no chat template (base models): ChatML, which most small instruct models use.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

Messages = list[dict[str, str]]


class ChatRenderer:
    """The GGUF's own chat template and tokenizer (llama.cpp's), for prompts and for prompt + answer."""

    def __init__(self, llm: llama_cpp.Llama):
        self.llm = llm
        model = llm._model
        template = llm.metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        eos = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        bos = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        self._prompt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                           add_generation_prompt=True)
        self._full = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                         add_generation_prompt=False)

    def tokenize(self, text: str) -> list[int]:
        # The template already writes any BOS it wants (added_special), as llama-cpp-python's own chat path.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, messages: Messages) -> list[int]:
        return self.tokenize(self._prompt(messages=messages).prompt)

    def example_tokens(self, messages: Messages, answer: str) -> tuple[list[int], list[int]]:
        """(prompt tokens, answer tokens): the answer part is what the model generates after the prompt,
        ending with the template's end-of-turn (so the trained model learns to stop), trailing newlines cut."""
        prompt = self._prompt(messages=messages).prompt
        full = self._full(messages=[*messages, {"role": "assistant", "content": answer}]).prompt.rstrip("\n")
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the answer turn in a way that does not extend the prompt")
        p_tokens = self.tokenize(prompt)
        all_tokens = self.tokenize(full)
        if all_tokens[: len(p_tokens)] == p_tokens:
            return p_tokens, all_tokens[len(p_tokens):]
        return p_tokens, self.tokenize(full[len(prompt):])
