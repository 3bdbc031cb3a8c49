"""Text to token ids: how prompts and answers become the ids a model receives, and the batches
they travel in.

* `PromptFormat`: one model's tokenizer and prompt format (raw prompt with the tokenizer's own
  special tokens, or its chat template) — prompt, answer and prompt + answer ids, and how many
  leading ids are prompt (docs/protocol.md#prompt-format). Needs no weights;
* `TokenBatch`: left-padded ids with the prompt / label bookkeeping the protocol needs;
* `Batching`: `batch()`, which left-pads (ids, n_prompt) rows into a `TokenBatch` (a mixin of
  `EditableModel`, which supplies `pad_id` and `device`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class TokenBatch:
    """Left-padded token ids with the prompt / label bookkeeping the protocol needs."""

    input_ids: torch.Tensor  # B x T
    attention_mask: torch.Tensor  # B x T (1 = real token)
    prompt_mask: torch.Tensor  # B x T bool, True at prompt tokens
    labels: torch.Tensor  # B x T, -100 except at target tokens

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def predicts_label(self) -> torch.Tensor:
        """B x T bool: positions whose logits predict a labelled token (logits at t predict t+1)."""
        nxt = torch.zeros_like(self.prompt_mask)
        nxt[:, :-1] = self.labels[:, 1:] != -100
        return nxt

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.prompt_mask, self.labels)))


class PromptFormat:
    """How prompts and answers become token ids for one model: its tokenizer's own special tokens
    for raw prompts, or its chat template. Needs no weights, so inputs are checked against the
    model's context length before the model loads."""

    def __init__(self, tokenizer, chat_template: bool, system_prompt: str | None = None):
        self.tok = tokenizer
        self.chat_template = bool(chat_template)
        self.system_prompt = system_prompt

    def format_prompt(self, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        msgs = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        msgs.append({"role": "user", "content": prompt})
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    @property
    def answer_sep(self) -> str:
        """What joins a prompt and its answer: a space for raw prompts, nothing after a chat turn."""
        return "" if self.chat_template else " "

    def encode_prompt(self, prompt: str) -> list[int]:
        # Raw prompts get the model's own default special tokens (BOS for LLaMA, none for Qwen or
        # SmolLM2 — see `gguf_tokenizer`); a chat template brings its own.
        return self.tok(self.format_prompt(prompt), add_special_tokens=not self.chat_template).input_ids

    def encode_answer(self, answer: str) -> list[int]:
        return self.tok.encode(answer, add_special_tokens=False)

    def encode_example(self, prompt: str, target: str) -> tuple[list[int], int]:
        """Ids of prompt + sep + target, and how many leading ids are prompt
        (docs/protocol.md#prompt-format)."""
        text = self.format_prompt(prompt) + self.answer_sep + target
        ids = self.tok(text, add_special_tokens=not self.chat_template).input_ids
        n_prompt = len(self.encode_prompt(prompt))
        return ids, min(n_prompt, len(ids) - 1)

    def example_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """len(encode_example(prompt, answer)) for many pairs, in one batched tokenizer call."""
        texts = [self.format_prompt(p) + self.answer_sep + a for p, a in pairs]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=not self.chat_template).input_ids]


def left_padded(states: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Per-sequence hidden states (T_i x d) in one B x width x d tensor, right-aligned as `batch()`
    left-pads their ids (zeros at the padding)."""
    h = states[0].new_zeros((len(states), width, states[0].shape[-1]))
    for i, s in enumerate(states):
        h[i, width - s.shape[0]:] = s
    return h


class Batching:
    """`batch()`, a mixin of `EditableModel` (which supplies `pad_id` and `device`)."""

    def batch(self, rows: Sequence[tuple[list[int], int]]) -> TokenBatch:
        """Left-pad (ids, n_prompt) rows; positions >= n_prompt are labelled targets."""
        T = max(len(ids) for ids, _ in rows)
        B = len(rows)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        pmask = torch.zeros((B, T), dtype=torch.bool)
        labels = torch.full((B, T), -100, dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(rows):
            off = T - len(ids)
            input_ids[i, off:] = torch.tensor(ids)
            attn[i, off:] = 1
            pmask[i, off:off + n_prompt] = True
            labels[i, off + n_prompt:] = torch.tensor(ids[n_prompt:], dtype=torch.long)
        return TokenBatch(input_ids, attn, pmask, labels).to(self.device)
