"""Second-moment statistics of a module's inputs, `C = E[k kᵀ]`, on the unedited model (ROME, AlphaEdit).

`C` is the uncentred second moment of the inputs of a linear module (an MLP `down_proj`) over every
real token of a general-text corpus, each text truncated to `max_length` tokens. It is computed
once per (model weights, site, corpus, sample count, max length, library versions, version of the
method): all sites one editor needs in one pass over the corpus, with a progress bar, then cached
under `<cache_dir>/stats/` with a file name naming the model, layer, module, corpus and sample
count and a hash of everything else. A cache file is written to a temporary name, fsync'd and
renamed, so an interrupted computation never leaves a file that looks complete; it holds the SHA-256
of its contents, and a file that fails it, does not load, or holds a `C` of the wrong shape is
recomputed (said in one line). Later runs and resumed runs load it.

Corpora: `wikitext2` (shipped with editbench: `data/text/wikitext2_paragraphs.md`), a path to a
`.jsonl` (field `text`) or `.txt` (one text per line) file, or `hub:<dataset>[:<config>]` read
with `datasets` where a hub is reachable (split `train`, field `text`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from editbench.errors import EditbenchError
from editbench.models import EditableModel, EditSite, Pass, _StopForward
from editbench.progress import Bar

# The version of how `C` is computed (which tokens count, truncation, accumulation precision). It is
# part of every cache key: bump it with any change to `_accumulate` or what it calls, so a cache
# file written by the old code is never read as the new code's result.
METHOD_VERSION = 1

SHIPPED = {"wikitext2": Path(__file__).parent / "data" / "text" / "wikitext2_paragraphs.jsonl"}


@dataclass(frozen=True)
class Corpus:
    name: str
    texts: tuple[str, ...]
    fingerprint: str  # sha256 of the texts used (so an edited file is a new cache entry)


def load_corpus(spec: str, n_samples: int) -> Corpus:
    """The first `n_samples` non-empty texts of corpus `spec` (see the module docstring)."""
    if spec.startswith("hub:"):
        name, _, config = spec[4:].partition(":")
        try:
            import datasets

            ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
            texts = []
            for row in ds:
                if row["text"].strip():
                    texts.append(row["text"])
                if len(texts) == n_samples:
                    break
        except Exception as e:  # offline, unknown dataset, no `text` field
            raise EditbenchError(f"statistics corpus {spec!r} could not be read through datasets ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}) — name a local corpus instead, e.g. "
                                 f"editor.mom2_dataset=wikitext2") from None
    else:
        path = SHIPPED.get(spec, Path(spec).expanduser())
        if not path.is_file():
            raise EditbenchError(f"statistics corpus {spec!r} not found — use editor.mom2_dataset=wikitext2 (shipped), "
                                 f"a .jsonl/.txt file, or hub:<dataset>")
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix == ".jsonl":
            texts = [json.loads(x)["text"] for x in lines if x.strip()]
        else:
            texts = lines
        texts = [t for t in texts if t.strip()][:n_samples]
    if len(texts) < n_samples:
        raise EditbenchError(f"statistics corpus {spec!r} holds {len(texts)} non-empty texts but "
                             f"editor.mom2_n_samples={n_samples} — lower mom2_n_samples to at most {len(texts)} "
                             f"or name a larger corpus")
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    return Corpus(spec, tuple(texts), digest)


def weights_fingerprints(model: EditableModel, up_to_layer: int) -> list[str]:
    """For each layer l <= up_to_layer, sha256 over the embedding and blocks 0..l: everything the
    inputs of a module in block l depend on."""
    h = hashlib.sha256()
    inner = model.model.model

    def feed(mod):
        for name, p in mod.state_dict().items():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())

    feed(inner.embed_tokens)
    out = []
    for block in inner.layers[: up_to_layer + 1]:
        feed(block)
        out.append(h.copy().hexdigest())
    return out


def _cache_path(cache_dir: Path, model: EditableModel, site: EditSite, corpus: Corpus, max_length: int,
                weights: str) -> Path:
    import transformers

    ident = (weights, site.layer, site.module, corpus.fingerprint, len(corpus.texts), max_length,
             torch.__version__, transformers.__version__, METHOD_VERSION)
    digest = hashlib.sha1(repr(ident).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in corpus.name)[-40:]
    return (Path(cache_dir) / "stats" /
            f"{model.name}__L{site.layer}.{site.module}__{safe}__n{len(corpus.texts)}__{digest}.pt")


@dataclass
class Moments:
    """`C` per site (float32, d_in x d_in) and the facts a result row records about it."""

    C: dict[tuple[int, str], torch.Tensor]
    info: dict


def second_moments(model: EditableModel, sites: Sequence[EditSite], corpus: Corpus, cache_dir: Path,
                   max_length: int, batch_tokens: int = 4096) -> Moments:
    """`C = E[k kᵀ]` of the inputs of the module at every site (from cache where present and intact)."""
    sites = list(sites)
    weights = weights_fingerprints(model, max(s.layer for s in sites))
    paths = {(s.layer, s.module): _cache_path(cache_dir, model, s, corpus, max_length, weights[s.layer])
             for s in sites}
    C, tokens = {}, None
    t0 = time.perf_counter()
    for s in sites:
        key = (s.layer, s.module)
        if paths[key].is_file():
            blob = _load(paths[key], _input_width(model, s))
            if blob is not None:
                C[key], tokens = blob["C"], int(blob["tokens"])
    missing = [s for s in sites if (s.layer, s.module) not in C]
    if missing:
        sums, tokens = _accumulate(model, missing, corpus, max_length, batch_tokens)
        for s in missing:
            key = (s.layer, s.module)
            C[key] = (sums[key] / tokens).float()
            _save(paths[key], {"C": C[key], "tokens": tokens, "texts": len(corpus.texts)})
    info = {"corpus": corpus.name, "texts": len(corpus.texts), "tokens": tokens, "max_length": max_length,
            "cached": not missing, "seconds": round(time.perf_counter() - t0, 3)}
    return Moments(C, info)


def _digest(blob: dict) -> str:
    h = hashlib.sha256(blob["C"].contiguous().view(torch.uint8).numpy().tobytes())
    h.update(repr((list(blob["C"].shape), str(blob["C"].dtype), int(blob["tokens"]), int(blob["texts"]))).encode())
    return h.hexdigest()


def _save(path: Path, blob: dict) -> None:
    """Write a cache file with the SHA-256 of its contents: temporary name, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({**blob, "sha256": _digest(blob)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path, width: int | None) -> dict | None:
    """A cache file's contents, or None (said in one line) when it is corrupt: it does not load,
    fails its SHA-256 (files from before the checksum have none), or its `C` is not width x width."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        C = blob["C"]
        square = isinstance(C, torch.Tensor) and C.dim() == 2 and C.shape[0] == C.shape[1]
        if not square or (width and C.shape[0] != width):
            raise ValueError(f"C has shape {tuple(getattr(C, 'shape', ()))}, the module takes {width} inputs")
        if "sha256" in blob and _digest(blob) != blob["sha256"]:
            raise ValueError("its contents do not match their SHA-256")
        return blob
    except Exception as e:  # truncated zip, bad pickle, missing key, wrong shape, checksum
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        print(f"[editbench] statistics cache {path.name} is corrupt ({reason}); recomputing it")
        return None


def _input_width(model: EditableModel, site: EditSite) -> int | None:
    """The number of inputs of the module at `site` (a linear layer's in_features), if it says."""
    module = model.module_at(site)
    return getattr(module, "in_features", None)


@torch.no_grad()
def _accumulate(model: EditableModel, sites: list[EditSite], corpus: Corpus, max_length: int,
                batch_tokens: int) -> tuple[dict, int]:
    """Σ k kᵀ (float64) per site over every real token, and the token count: one partial forward
    pass per batch of texts (sorted by length, right-padded), stopped after the highest site."""
    tok = model.tok
    ids = [tok(t, add_special_tokens=True, truncation=True, max_length=max_length).input_ids for t in corpus.texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    sums = {(s.layer, s.module): None for s in sites}
    top = max(s.layer for s in sites)
    mask_now: dict = {}  # the current batch's real-token mask, read by the hooks

    def grab(key):
        def hook(_module, args):
            x = args[0].double()[mask_now["m"]]  # real tokens only
            sums[key] = x.T @ x if sums[key] is None else sums[key] + x.T @ x
        return hook

    handles = [model.module_at(s).register_forward_pre_hook(grab((s.layer, s.module))) for s in sites]
    stopper = model.blocks[top + 1].register_forward_pre_hook(_raise) if top + 1 < len(model.blocks) else None
    n_tokens = 0
    try:
        bar = Bar(len(ids), f"second moments ({corpus.name})", unit="text", every_pct=10)
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and (j - i + 1) * len(ids[order[j]]) <= batch_tokens:
                j += 1
            rows = [ids[k] for k in order[i:j]]
            T = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), T), model.pad_id, dtype=torch.long)
            attn = torch.zeros((len(rows), T), dtype=torch.long)
            for r, seq in enumerate(rows):
                input_ids[r, :len(seq)] = torch.tensor(seq)
                attn[r, :len(seq)] = 1
            input_ids, attn = input_ids.to(model.device), attn.to(model.device)
            mask_now["m"] = attn.bool()
            with model.bind(Pass("unedited", attn.bool())):
                try:
                    model.model.model(input_ids=input_ids, attention_mask=attn, use_cache=False)
                except _StopForward:
                    pass
            n_tokens += int(attn.sum())
            bar.update(j - i)
            i = j
        bar.close()
    finally:
        for h in handles:
            h.remove()
        if stopper is not None:
            stopper.remove()
    return sums, n_tokens


def _raise(_module, _args):
    raise _StopForward
