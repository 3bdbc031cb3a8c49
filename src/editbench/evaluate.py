"""Scores an (edited) model on edit cases: batched greedy generation or teacher forcing.

The evaluator scores each case's named probe sets with the scorer each set names (`SCORERS`) and
returns one metric per probe set (mean over the cases that have it), the dataset family's overall
score, and a record per probe (score and output ids) so any number can be audited case by case.
It owns tokenisation for scoring and the unedited model's reference outputs (locality); the
formulas are in `metrics.py`. Every forward pass is bound to an explicit `models.Pass` (prefill,
cached decode step, or unedited), so site wrappers know where they are.

**Exact shortcut for greedy scoring.** Greedy decoding from a prompt yields a candidate token
sequence c exactly when, run teacher-forced on prompt + c, the argmax at every answer position
equals c (induction over decoding steps). The evaluator first checks each row's expected answer
that way (the target for Rel/Gen, the unedited model's own output for Loc) and decodes only the
rows that fail; by the same induction a row whose argmax first differs from c at position j starts
with c[:j] and that argmax, so its decoding goes on after them (none when they fill the output or
end it). When the editor leaves every block below the edit site frozen, the hidden states
entering the edit-site block are the same at every checkpoint and for every editor: they are
computed once (`cache.StateCache`) and each check runs only the blocks from the edit site up.
Free generation (`scoring="free"`) uses the same shortcut: a candidate that ends at a stop token
(EOS, or a token holding a newline) is the whole free generation when every one of its tokens,
the stop included, is the argmax.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from editbench import metrics
from editbench.cache import StateCache
from editbench.data import EditCase, Probe
from editbench.errors import EditbenchError
from editbench.models import EditableModel, Pass
from editbench.models.text import left_padded

SCORINGS = ("greedy", "teacher_forced", "free")


@dataclass
class Scores:
    """One evaluation: metric values by name (`names`: their order, the overall score last) and
    one record per scored probe: case id, probe set, probe index, score, output ids."""

    metrics: dict[str, float]
    names: list[str]
    records: list[dict]


def cache_key(model_cfg: dict, scoring: str) -> str:
    """Identifies the unedited model's states: its config (not where it runs) and the library
    versions that compute them."""
    import transformers

    keep = {k: v for k, v in model_cfg.items() if k not in ("device", "device_map")}
    ident = (sorted(keep.items()), scoring, torch.__version__, transformers.__version__)
    return hashlib.sha1(repr(ident).encode()).hexdigest()[:16]


def state_cache(cfg, scoring: str) -> StateCache:
    """The unedited-state cache a run config uses: `<cache_dir>/states/<model>-<cache_key>.sqlite`,
    capped at `cache_max_gb` (shared by every run and script on the same model and scoring)."""
    from omegaconf import OmegaConf

    key = cache_key(OmegaConf.to_container(cfg.model, resolve=True), scoring)
    return StateCache(Path(cfg.cache_dir).expanduser() / "states" / f"{cfg.model.name}-{key}.sqlite",
                      max_gb=float(cfg.cache_max_gb))


def text_means(per_case: dict) -> dict[str, float]:
    """A free-text probe set's values: per metric, the mean over cases of each case's mean over
    its probes (`per_case`: case -> [{metric: score}, ...])."""
    first = next(iter(per_case.values()))[0]
    return {k: metrics.mean([metrics.mean([s[k] for s in v]) for v in per_case.values()]) for k in first}


class Evaluator:
    #: probe-set scorer name -> method; a probe set names its scorer (`ProbeSet.scorer`)
    SCORERS = {"accuracy": "_score_accuracy", "locality": "_score_locality", "freetext": "_score_freetext",
               "freetext_rouge": "_score_freetext_rouge"}
    #: the free-text scorers -> whether they keep ROUGE only (`text_scores`)
    TEXT_SCORERS = {"freetext": False, "freetext_rouge": True}
    #: scorers that compare with the unedited model's own outputs (computed once by `reference`)
    NEEDS_REFERENCE = {"locality"}
    #: part of the key under which a run keeps its reference outputs (`build.reference_key`): bump
    #: it with any change to what `reference` computes, so that kept outputs are computed again
    REFERENCE_VERSION = 1

    def __init__(self, model: EditableModel, scoring: str = "greedy", batch_size: int = 32,
                 cache: StateCache | None = None, max_new_tokens: int = 512):
        if scoring not in SCORINGS:
            raise EditbenchError(f"protocol.scoring={scoring!r} is not one of {SCORINGS} — pick one of them")
        self.m, self.scoring, self.batch_size = model, scoring, batch_size
        self.max_new_tokens = max_new_tokens  # free-text probe sets: generation cap
        self.cache = cache or StateCache(None)

    # ------------------------------------------------------------------ public
    def reference(self, cases: Sequence[EditCase]) -> list[dict[str, list[list[int]]]]:
        """Per case: probe-set name -> the unedited model's output for each probe of the sets
        whose scorer needs one (greedy: all decoded tokens; TF: argmax tokens)."""
        items = [(i, name, p) for i, c in enumerate(cases) for name, ps in c.probes.items()
                 if self._scorer(name, ps.scorer) in self.NEEDS_REFERENCE for p in ps.probes]
        outs = self._unedited_outputs([p for _, _, p in items])
        refs: list[dict[str, list[list[int]]]] = [{} for _ in cases]
        for (i, name, _), out in zip(items, outs):
            refs[i].setdefault(name, []).append(out)
        return refs

    def evaluate(self, module: nn.Module, cases: Sequence[EditCase], refs: Sequence[dict],
                 reuse_layer: int | None = None, overall: metrics.Overall | None = None) -> Scores:
        """Score every probe set of `cases` on `module`; `refs` from `reference` (same cases).
        `reuse_layer`: every block below it is unedited (the lowest layer the editor touches), so
        the exact shortcut may start from cached unedited states there; None: decode everything."""
        return self.aggregate(cases, self.score_records(module, cases, refs, reuse_layer), overall)

    def score_records(self, module: nn.Module, cases: Sequence[EditCase], refs: Sequence[dict],
                      reuse_layer: int | None = None) -> list[dict]:
        """The records of `evaluate` (one per scored probe, probe set by probe set, cases in
        order): what `aggregate` turns into metrics. A long evaluation runs this on consecutive
        parts of its cases and keeps each part's records (the runner)."""
        fast = reuse_layer if reuse_layer is not None and module is self.m.model else None
        records = []
        for name in dict.fromkeys(n for c in cases for n in c.probes):
            have = [i for i, c in enumerate(cases) if name in c.probes]
            scorer = self._scorer(name, *{cases[i].probes[name].scorer for i in have})
            items = [(i, j, p) for i in have for j, p in enumerate(cases[i].probes[name].probes)]
            ref = [refs[i][name][j] for i, j, _ in items] if scorer in self.NEEDS_REFERENCE else None
            scored = getattr(self, self.SCORERS[scorer])(module, [p for _, _, p in items], ref, fast)
            for (i, j, _), (score, out, *more) in zip(items, scored):
                records.append({"case": cases[i].id, "set": name, "i": j, "score": score,
                                "out": self.m.tok.decode(out), "ids": out, **(more[0] if more else {})})
        return records

    #: the keys every record has; any other key is a scorer's second metric (free scoring: "prefix")
    RECORD_KEYS = ("case", "set", "i", "score", "out", "ids")

    @classmethod
    def aggregate(cls, cases: Sequence[EditCase], records: list[dict], overall: metrics.Overall | None = None) -> Scores:
        """Metrics from the records of `score_records` for `cases` (in the order it writes them,
        or the concatenation of consecutive parts' records, ordered by probe set with a stable
        sort): per probe set, the mean over cases of each case's mean over its probes."""
        order = {name: k for k, name in enumerate(dict.fromkeys(n for c in cases for n in c.probes))}
        records = sorted(records, key=lambda r: order[r["set"]])  # stable: cases stay in order within a set
        values, counts, at = {}, {}, 0
        for name in order:
            have = [c for c in cases if name in c.probes]
            per_case: list[list] = []
            extra: dict[str, list[list]] = {}  # a scorer's second metrics per probe (free: "prefix")
            for c in have:
                mine = records[at:at + len(c.probes[name].probes)]
                at += len(mine)
                if any(r["case"] != c.id or r["set"] != name for r in mine):
                    raise EditbenchError(f"evaluation records out of step with the cases at case {c.id}, probe set "
                                         f"'{name}' — re-run the evaluation")
                if not mine:  # a case with an empty probe set counts in n_<set>, not in its mean
                    continue
                per_case.append([r["score"] for r in mine])
                for k in [k for k in mine[0] if k not in cls.RECORD_KEYS]:
                    extra.setdefault(k, []).append([r[k] for r in mine])
            first = per_case[0][0] if per_case else 0.0
            if isinstance(first, dict):  # a free-text set: one value per metric, `<set>_<metric>`
                values.update({f"{name}_{k}": v for k, v in text_means(dict(enumerate(per_case))).items()})
            else:
                values[name] = metrics.mean([metrics.mean(v) for v in per_case])
            for k, by_case in extra.items():
                values[f"{name}_{k}"] = metrics.mean([metrics.mean(v) for v in by_case])
            counts[name] = len(have)
        if at != len(records):
            raise EditbenchError(f"{len(records) - at} evaluation records belong to no case — re-run the evaluation")
        names = list(values)
        if overall is not None and all(p in values for p in overall.parts):
            values[overall.name] = overall(values)
            names.append(overall.name)
        values["n_eval"] = len(cases)
        values.update({f"n_{k}": n for k, n in counts.items() if n != len(cases)})  # sets only some cases have
        return Scores(values, names, records)

    def _scorer(self, name: str, *scorers: str) -> str:
        if len(scorers) != 1 or scorers[0] not in self.SCORERS:
            raise EditbenchError(f"probe set '{name}' names scorer(s) {sorted(scorers)} — each probe set needs one of "
                                 f"{sorted(self.SCORERS)} (fix the dataset adapter)")
        return scorers[0]

    # ------------------------------------------------------------------ scorers
    def _score_accuracy(self, module, probes: list[Probe], ref, fast: int | None) -> list[tuple[float, list[int]]]:
        """Rel / Gen: token exact match of the answer (docs/protocol.md#rel-and-gen, greedy or teacher-forced)."""
        pairs = [(p.prompt, p.answer) for p in probes]
        if self.scoring == "teacher_forced":
            preds, labels = self._teacher_forced(module, pairs)
            return [(metrics.token_accuracy(p, y), p) for p, y in zip(preds, labels)]
        if self.scoring == "free":
            expected = [self.m.encode_answer(self.m.answer_sep + y) + [self.m.eos_id] for _, y in pairs]
            gens = self._generate_free(module, pairs, expected, fast)
            texts = [metrics.free_text(self.m.tok, g, self.stop_ids) for g in gens]
            return [(metrics.text_em(t, y), g, {"prefix": metrics.prefix_match(t, y)})
                    for t, g, (_, y) in zip(texts, gens, pairs)]
        expected = [self.m.encode_answer(self.m.answer_sep + y) for _, y in pairs]
        gens = self._generate_for(module, pairs, expected, fast)
        targets = [self.m.encode_answer(y) for _, y in pairs]
        return [(metrics.token_em(metrics.answer_ids(self.m.tok, g, len(y)), y), self.m.until_eos(g))
                for g, y in zip(gens, targets)]

    def _score_locality(self, module, probes: list[Probe], ref, fast: int | None) -> list[tuple[float, list[int]]]:
        """Loc: agreement with the unedited model's output on the same prompt."""
        pairs = [(p.prompt, p.answer) for p in probes]
        if self.scoring == "teacher_forced":
            post = self._teacher_forced(module, pairs)[0]
            return [(metrics.agreement(a, b), b) for a, b in zip(ref, post)]
        if self.scoring == "free":
            post = self._generate_free(module, pairs, list(ref), fast)
            text = lambda ids: metrics.free_text(self.m.tok, ids, self.stop_ids)  # noqa: E731
            return [(metrics.text_em(text(b), text(a)), b) for a, b in zip(ref, post)]
        post = self._generate_for(module, pairs, list(ref), fast)
        return [(metrics.agreement(self._loc_tail(a, p), self._loc_tail(b, p)), self.m.until_eos(b))
                for a, b, p in zip(ref, post, probes)]

    def _score_freetext(self, module, probes: list[Probe], ref, fast: int | None,
                        scorer: str = "freetext") -> list[tuple[dict, list[int]]]:
        """Free text (docs/protocol.md#free-text-metrics): greedy generation of up to `max_new_tokens` (stopping at
        EOS), decoded without special tokens and stripped, scored against the reference answer
        with every metric of `textmetrics`, or ROUGE recall and F1 only where `TEXT_SCORERS` says
        so for `scorer`."""

        prompts = [self.m.encode_prompt(p.prompt) for p in probes]
        gens = self._batched(prompts, lambda idx: self.greedy(module, [prompts[i] for i in idx],
                                                               [self.max_new_tokens] * len(idx)))
        outs = [self.m.until_eos(g) for g in gens]
        return list(zip(self.text_scores(outs, [p.answer for p in probes], self.TEXT_SCORERS[scorer]), outs))

    def text_scores(self, outs: list[list[int]], answers: list[str], rouge_only: bool = False,
                    embeddings: bool = True) -> list[dict[str, float]]:
        """Free-text scores of generated ids `outs` (decoded without special tokens, stripped)
        against `answers` (stripped): every `textmetrics` metric, or ROUGE only; `embeddings=False`
        leaves out the encoder metrics (`editbench retext` recomputes only the others)."""
        from editbench import textmetrics

        texts = [self.m.tok.decode(o, skip_special_tokens=True).strip() for o in outs]
        scores = textmetrics.score_pairs(texts, [a.strip() for a in answers], embeddings=embeddings and not rouge_only)
        if rouge_only:
            scores = [{k: v for k, v in s.items() if k.startswith("rouge")} for s in scores]
        return scores

    def _score_freetext_rouge(self, module, probes: list[Probe], ref, fast: int | None):
        """Sub-questions: ROUGE only (docs/protocol.md#free-text-metrics), averaged within the case first."""
        return self._score_freetext(module, probes, ref, fast, scorer="freetext_rouge")

    def _unedited_outputs(self, probes: list[Probe]) -> list[list[int]]:
        pairs = [(p.prompt, p.answer) for p in probes]
        if self.scoring == "teacher_forced":
            return self._teacher_forced(self.m.model, pairs, unedited=True)[0]
        n_new = self._free_caps(pairs) if self.scoring == "free" else [
            len(self.m.encode_answer(self.m.answer_sep + g)) for _, g in pairs]
        keys = [tuple(self.m.encode_prompt(x)) + (n,) for (x, _), n in zip(pairs, n_new)]
        have = self.cache.get_outputs(keys)
        todo = [i for i, k in enumerate(keys) if k not in have]
        if todo:
            gen = self._generate_free if self.scoring == "free" else self._generate_for
            fresh = gen(self.m.model, [pairs[i] for i in todo], None, None, unedited=True)
            new = {keys[i]: out for i, out in zip(todo, fresh)}
            self.cache.put_outputs(new)
            have.update(new)
        return [have[k] for k in keys]

    # ------------------------------------------------------------------ scoring modes
    def _loc_tail(self, ids: list[int], p: Probe) -> list[int]:
        """Greedy locality compares the last len(tok(answer)) ids of the *full* output sequence,
        prompt included (docs/protocol.md#loc). The output ends at its first EOS, as HF `generate` (the
        reference decodes one prompt at a time) stops there: when the output is shorter than the
        answer, or the answer encodes longer without its leading space than the decode length, the
        tail reaches back into the (shared) prompt."""
        k = len(self.m.encode_answer(p.answer))
        full = self.m.encode_prompt(p.prompt) + self.m.until_eos(ids)
        return full[max(len(full) - k, 0):]

    def _generate_for(self, module, pairs, candidates, fast: int | None, unedited: bool = False) -> list[list[int]]:
        """Greedy outputs; with `fast` (a layer below which the model is unedited) each row's
        candidate is first confirmed teacher-forced from cached states at that layer."""
        prompts = [self.m.encode_prompt(x) for x, _ in pairs]
        n_new = [len(self.m.encode_answer(self.m.answer_sep + y)) for _, y in pairs]
        cut = None if candidates is None else [list(c[:n]) for c, n in zip(candidates, n_new)]
        return self._confirmed_or_generated(module, prompts, cut, n_new, fast, unedited, free=False)

    def _confirmed_or_generated(self, module, prompts, candidates, caps, fast: int | None, unedited: bool,
                                free: bool) -> list[list[int]]:
        """Per prompt: its candidate where `fast` is given and the candidate is confirmed from
        cached states (`_known`: greedy rows for `caps[i]` tokens; free rows for the candidate's
        own length, ending at a stop token or the cap), else a greedy generation of up to `caps[i]`
        tokens (free: stopping at, and cut after, the first stop token). A candidate that is not
        confirmed still fixes the generation's first tokens (up to and including its first wrong
        one, `_known`): the generation continues after them, or ends there when they end it."""
        found: list = [None] * len(prompts)
        if fast is not None and candidates is not None:
            found = self._known(prompts, candidates, caps, fast, stopped=free)
        out: list = [None] * len(prompts)
        known: list = [[] for _ in prompts]
        ends = self.stop_ids if free else frozenset(self.m.eos_ids)
        for i, f in enumerate(found):
            if f is None:
                continue
            confirmed, k = f
            if confirmed:
                out[i] = k
            elif len(k) == caps[i] or k[-1] in ends:  # its known tokens end the generation
                out[i] = k if free else k + [self.m.eos_id] * (caps[i] - len(k))
            else:
                known[i] = k
        todo = [i for i in range(len(prompts)) if out[i] is None]
        rows = [prompts[i] + known[i] for i in todo]
        lens = [len(prompts[i]) for i in todo]
        rest = [caps[i] - len(known[i]) for i in todo]
        if free:
            def generate(idx):
                return self.m.greedy(module, [rows[i] for i in idx], [rest[i] for i in idx], unedited=unedited,
                                     stop_ids=self.stop_ids, prompt_lens=[lens[i] for i in idx])
        else:
            def generate(idx):
                return self.greedy(module, [rows[i] for i in idx], [rest[i] for i in idx], unedited=unedited,
                                   prompt_lens=[lens[i] for i in idx])
        for i, g in zip(todo, self._batched(rows, generate)):
            out[i] = self._through_stop(known[i] + g) if free else known[i] + g
        return out

    # ------------------------------------------------------------------ free generation
    @property
    def stop_ids(self) -> frozenset[int]:
        """Where a free generation stops: the EOS ids and every token whose text holds a newline."""
        if not hasattr(self, "_stop_ids"):
            tok = self.m.tok
            self._stop_ids = frozenset(self.m.eos_ids) | frozenset(
                i for i in range(len(tok)) if "\n" in tok.decode([i]))
        return self._stop_ids

    def _free_caps(self, pairs) -> list[int]:
        return [metrics.free_cap(len(self.m.encode_answer(self.m.answer_sep + y))) for _, y in pairs]

    def _generate_free(self, module, pairs, candidates, fast: int | None, unedited: bool = False) -> list[list[int]]:
        """Free greedy generations, each through its first stop token (or `free_cap` tokens); with
        `fast`, each row's candidate is first confirmed from cached states (see module doc)."""
        prompts = [self.m.encode_prompt(x) for x, _ in pairs]
        caps = self._free_caps(pairs)
        cut = None if candidates is None else [self._through_stop(list(c)[:n]) for c, n in zip(candidates, caps)]
        return self._confirmed_or_generated(module, prompts, cut, caps, fast, unedited, free=True)

    def _through_stop(self, ids: list[int]) -> list[int]:
        ends = [k for k, t in enumerate(ids) if t in self.stop_ids]
        return ids[:ends[0] + 1] if ends else ids

    # ------------------------------------------------------------------ the exact shortcut
    def _known(self, prompts, candidates, caps, layer: int,
               stopped: bool = False) -> list[tuple[bool, list[int]] | None]:
        """Per row, what one teacher-forced pass over prompt + candidates[i][:caps[i]] tells of the
        greedy output of `caps[i]` tokens (see module doc): (True, the candidate) where the
        candidate is a whole output (greedy: `caps[i]` tokens, checked through its first EOS, after
        which the decoder pads with EOS on its own; `stopped`, a free generation: through its stop
        token, or `caps[i]` tokens) and every answer position's argmax is its token; else (False,
        the output's first tokens: the candidate's tokens before the first position where the
        argmax differs, then that argmax; the whole candidate where none differs); None: no
        candidate."""
        rows, whole = [], []
        for p, c, n in zip(prompts, candidates, caps):
            c = list(c[:n])
            rows.append((p + (c if stopped else self.m.until_eos(c)), len(p)) if c else None)
            whole.append(len(c) == n or (stopped and bool(c) and c[-1] in self.stop_ids))
        live = [i for i, r in enumerate(rows) if r is not None]
        known: list = [None] * len(rows)
        preds = self._batched([rows[i][0] for i in live], lambda idx: self._check([rows[live[i]] for i in idx], layer))
        for i, pred in zip(live, preds):
            ids, n_prompt = rows[i]
            cand = ids[n_prompt:]
            wrong = next((k for k, (a, b) in enumerate(zip(pred, cand)) if a != b), None)
            if wrong is None:
                known[i] = (whole[i], list(candidates[i][:caps[i]]) if whole[i] else cand)
            else:
                known[i] = (False, cand[:wrong] + [pred[wrong]])
        return known

    def _site_states(self, seqs: list[list[int]], layer: int) -> list[torch.Tensor]:
        """The unedited hidden states entering block `layer` for each sequence (cached)."""
        uniq = list(dict.fromkeys((layer, *s) for s in seqs))  # cache key: the layer, then the ids
        have = self.cache.get_site(uniq)
        missing = [s for s in uniq if s not in have]
        for k in range(0, len(missing), self.batch_size):
            chunk = missing[k:k + self.batch_size]
            batch = self.m.batch([(list(s[1:]), len(s) - 1) for s in chunk])
            h = self.m.prefix(batch, layer=layer).h
            new = {s: h[i, h.shape[1] - (len(s) - 1):].clone() for i, s in enumerate(chunk)}
            self.cache.put_site(new)
            have.update(new)
        return [have[(layer, *s)] for s in seqs]

    def prompt_states(self, prompts: list[list[int]], layer: int) -> list[torch.Tensor]:
        """The unedited hidden states entering block `layer` at each prompt's positions: read from a
        cached sequence that starts with the prompt (one the exact shortcut checked, prompt + answer),
        else computed and cached (`_site_states`)."""
        found = self.cache.get_site_extending([(layer, *p) for p in prompts])
        missing = [p for p in prompts if (layer, *p) not in found]
        found.update({(layer, *p): h for p, h in zip(missing, self._site_states(missing, layer))})
        return [found[(layer, *p)] for p in prompts]

    @torch.no_grad()
    def _check(self, rows: list[tuple[list[int], int]], layer: int) -> list[list[int]]:
        """Per (ids, n_prompt) row: the argmax at each answer position, teacher-forced from the cached
        unedited states entering block `layer`."""
        batch = self.m.batch(rows)
        states = self._site_states([ids for ids, _ in rows], layer)
        h = left_padded(states, batch.input_ids.shape[1])
        hidden = self.m.suffix_hidden(EditableModel.Prefix(h, batch, None, 0, layer), Pass("prefill", batch.prompt_mask))
        nxt = batch.predicts_label
        pred = self.m.model.lm_head(hidden[nxt]).argmax(-1)
        return [p.tolist() for p in torch.split(pred, nxt.sum(1).tolist())]

    # ------------------------------------------------------------------ plain paths
    def _teacher_forced(self, module, pairs, unedited: bool = False):
        rows = [self.m.encode_example(x, y) for x, y in pairs]

        def run(idx):
            batch = self.m.batch([rows[i] for i in idx])
            p = Pass("unedited" if unedited else "prefill", batch.prompt_mask)
            with torch.no_grad(), self.m.bind(p):
                hidden = module.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=batch.position_ids, use_cache=False).last_hidden_state
                nxt = batch.predicts_label
                pred = module.lm_head(hidden[nxt]).argmax(-1).tolist()
            out, k = [], 0
            for i, n in enumerate(nxt.sum(1).tolist()):
                out.append((pred[k:k + n], batch.labels[i, 1:][nxt[i, :-1]].tolist()))
                k += n
            return out

        res = self._batched([r[0] for r in rows], run)
        return [p for p, _ in res], [y for _, y in res]

    def _batched(self, seqs: list[list[int]], fn) -> list:
        """Apply fn to index batches of similar length; results back in input order."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out: list = [None] * len(seqs)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            for i, r in zip(idx, fn(idx)):
                out[i] = r
        return out

    @torch.no_grad()
    def greedy(self, module, prompts: list[list[int]], n_new: list[int], unedited: bool = False,
               use_cache: bool = True, prompt_lens: list[int] | None = None) -> list[list[int]]:
        """The adapter's greedy decoding (`EditableModel.greedy`)."""
        return self.m.greedy(module, prompts, n_new, unedited=unedited, use_cache=use_cache, prompt_lens=prompt_lens)
