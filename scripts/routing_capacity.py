"""How far does HoReN's routing carry? A routing-only capacity study of the codebook (issue #38,
item 3): no value is trained.

    python scripts/routing_capacity.py [--study capacity|damping] [--n N] [--out DIR] [--runs DIR] [--boot B]
                                       [KEY=VALUE ...]

KEY=VALUE are config overrides (`data=wikibigedit`, `model=...`); the default config is HoReN on
the embedded SmolLM2 and the ZsRE stream `data.order_seed=0` of the committed runs. `--n` (default
10,000, capped at the pool's size) is the stream length replayed.

Why routing alone is enough. HoReN's codebook evolves independently of its values: a key is the
pre-refinement pooled query q0 of the edit prompt, and whether an edit inserts a key (no match, or
a match with another label) or reuses an entry (a match with the same label) depends only on the
routing of q0 over the keys so far and on the labels. So the codebook of a real run is replayed
exactly by `replay_edit` — the key / insertion step of `HoReN.edit` with the editor's own
`refine`, `match`, `_same`, `book.add` and case counts, and no value training — on an editor built
as the runner builds it (`build.build`: the same seeded dummy entry).

What is measured, per variant (HoReN as configured; M = 0, i.e. GRACE+Norm = `experiment=
grace_norm`; M = 2; τ ∓ 0.05) at N = 100, 200, 500, 1K, 2K, 5K, 10K (and at the committed runs'
checkpoints), over the first N cases with the codebook after N edits, each probe routed as the
site wrapper routes a prefill pass (refine, match, s > τ):
  - accuracy probe sets (rel = the edit prompt, gen = its paraphrase; WikiBigEdit also personas
    and mhop): own entry (the entry its case's edit inserted or reused) / wrong entry (another;
    how many of those carry the same label) / no match;
  - locality probes (ZsRE: NQ questions): false retrieval = routed to any entry;
  - codebook size and the three insertion cases.

Queries. A probe's query depends only on its prompt ids (the model is causal), so each distinct
prompt's pooled query (`editor.query` on the edit-site input) is computed once, batched by
length, single-threaded, from the evaluator's cached unedited states entering the site's block
where the runs' evaluations left them (so only that block runs), and kept in
`<cache_dir>/queries/<model>-<key>-L<layer>.<module>-rho<ρ>.sqlite` (a `StateCache`: prompt ids ->
vector; the key covers the model config and the torch / transformers versions), so a rerun costs
only the replay. The JSON records how far batched queries
are from the editor's own single-prompt query (`checks.query_vs_editor`).

Checks against the committed runs under `<runs>/<data>/<model>/horen/` whose routing
hyper-parameters and stream match a variant: per checkpoint, the run's Rel / Gen / Loc beside the
routing rates, and with the run's records, per probe: the mean score of own / wrong / no-match
probes, Gen ≈ own rate × the own-entry probes' mean score, Loc ≈ 1 − false retrieval × the
retrieved probes' mean change, and whether every locality probe that changed was retrieved; a
run's checkpoint state (`ckpt/step_*/state.pt`) is compared with the replayed codebook at the same
edit (keys, labels, case counts).

Projection: each rate is fitted as cloglog(rate) = a + b ln N (binomial maximum likelihood;
own-entry rates through their complement) over the checkpoints N >= 1,000, where crowding
dominates (all grid checkpoints when fewer than 3 are that large; the fit over all of them is
kept beside it as `all_grid`), and projected to N = 50,000 with a 95 % interval from a bootstrap
over cases (the rates at every N recomputed from one resample, then refitted); a held-out check
fits without the last checkpoint and predicts it. It is an extrapolation of a two-parameter curve
beyond the measured range (and, for ZsRE, beyond the pool's 10,037 records): the interval covers
the sampling of cases, not the choice of curve (the held-out error and `all_grid` show that).

Writes `<out>/<data>_<model>.json` (default out: results/capacity).

`--study damping` (the paper's damping ablation, its Table 10 / Figure 10 analogue): the same replay
for the damping α ∈ {0.05, 0.1, 0.2, 0.5, 1.0} × Hopfield steps M ∈ {1, 2, 3}, and GRACE+Norm (M = 0)
as the reference, with every rate's 95 % bootstrap interval over cases at each checkpoint (no
projection); writes `<out>/<data>_<model>_damping.json`, which `make figures` draws as a Gen-vs-Loc
trade-off (paraphrases routed to their own entry against locality prompts falsely retrieved).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from editbench.__main__ import register_resolvers
from editbench import runrecords
from editbench.build import build, instantiate_group
from editbench.cache import StateCache
from editbench.editors._common import edit_labels, site_batches
from editbench.evaluate import cache_key
from editbench.provenance import git_hash

GRID = (100, 200, 500, 1000, 2000, 5000, 10000)
PROJECT_N = 50_000
FIT_FROM = 1000  # the fit's window: checkpoints from here on, where crowding dominates
OWN, WRONG, NO_MATCH = 0, 1, 2
#: the hyper-parameters that decide routing and insertion (values and their training do not)
ROUTING_KEYS = ("threshold", "pooling_ratio", "beta", "alpha", "hopfield_steps", "tol", "normalize", "same_label")
REPO = Path(__file__).resolve().parents[1]


def log(*a) -> None:
    print("[capacity]", *a, file=sys.stderr, flush=True)


def compose_cfg(overrides: list[str]):
    register_resolvers()
    with initialize_config_module("editbench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


DAMPING_ALPHAS = (0.05, 0.1, 0.2, 0.5, 1.0)
DAMPING_STEPS = (1, 2, 3)


def damping_variants() -> list[tuple[str, list[str]]]:
    """(name, overrides) of the damping ablation: α × M, then GRACE+Norm (M = 0)."""
    return [(f"alpha={a:g} M={m}", [f"editor.alpha={a:g}", f"editor.hopfield_steps={m}"])
            for m in DAMPING_STEPS for a in DAMPING_ALPHAS] + [("GRACE+Norm", ["experiment=grace_norm"])]


def variants(tau: float) -> list[tuple[str, list[str]]]:
    """(name, overrides) of the variants: HoReN as configured first."""
    lo, hi = round(tau - 0.05, 4), round(tau + 0.05, 4)
    return [("HoReN", []), ("GRACE+Norm", ["experiment=grace_norm"]), ("HoReN M=2", ["editor.hopfield_steps=2"]),
            (f"HoReN tau={lo:g}", [f"editor.threshold={lo:g}"]), (f"HoReN tau={hi:g}", [f"editor.threshold={hi:g}"])]


# ------------------------------------------------------------------------------------- queries
def query_cache(cfg, editor) -> StateCache:
    """The pooled-query store of one model, edit site, ρ and normalisation."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    site = cfg.model.edit_site
    name = (f"{cfg.model.name}-{cache_key(model_cfg, 'pooled_query')}-L{site.layer}.{site.module}"
            f"-rho{editor.rho:g}{'' if editor.normalize else '-raw'}")
    return StateCache(Path(cfg.cache_dir).expanduser() / "queries" / f"{name}.sqlite", max_gb=float(cfg.cache_max_gb))


@torch.no_grad()
def pooled_queries(model, editor, seqs: list[tuple[int, ...]], cache: StateCache, batch_size: int = 64,
                   every_s: float = 60.0, states=None) -> tuple[dict[tuple[int, ...], torch.Tensor], dict]:
    """`editor.query` of every prompt (token ids, all of them prompt), read from `cache` or computed
    in left-padded batches of similar length and stored; returns (ids -> q0, what it cost). `states`:
    the evaluator's unedited states entering the site's block (`Evaluator.prompt_states`: what the
    runs' evaluations cached), so only that block runs (`editors._common.site_batches`)."""
    uniq = list(dict.fromkeys(seqs))
    have = cache.get_site(uniq)
    missing = sorted((s for s in uniq if s not in have), key=len)
    t0 = last = time.perf_counter()
    for k in range(0, len(missing), batch_size):
        chunk = missing[k:k + batch_size]
        ((x, _, mask),) = site_batches(model, chunk, size=len(chunk), states=states)
        q = editor.query(x, mask)
        new = {s: q[i].clone() for i, s in enumerate(chunk)}
        cache.put_site(new)
        have.update(new)
        if time.perf_counter() - last > every_s:
            last = time.perf_counter()
            done = k + len(chunk)
            rate = done / (last - t0)
            log(f"queries {done}/{len(missing)} ({rate:.1f}/s, ~{(len(missing) - done) / rate / 60:.0f} min left)")
    seconds = time.perf_counter() - t0
    return have, {"prompts": len(uniq), "cached": len(uniq) - len(missing), "computed": len(missing),
                  "seconds": round(seconds, 1), "batch_size": batch_size, "threads": torch.get_num_threads()}


@torch.no_grad()
def edit_query(model, editor, request) -> torch.Tensor:
    """q0 exactly as `HoReN.edit` computes it: one unpadded prompt + " " + target."""
    batch = model.batch([model.encode_example(request.prompt, request.target)])
    x, _ = model.site_io(batch)
    return editor.query(x, batch.prompt_mask)[0]


@torch.no_grad()
def prompt_query(model, editor, prompt: str) -> torch.Tensor:
    """q0 of one unpadded prompt, as the site wrapper computes it at a prefill pass."""
    ids = model.encode_prompt(prompt)
    batch = model.batch([(ids, len(ids))])
    x, _ = model.site_io(batch)
    return editor.query(x, batch.prompt_mask)[0]


class StreamIds(NamedTuple):
    """Token ids of what the replay routes: per case the edit prompt (the prompt part of
    `encode_example`, as `HoReN.edit` sees it) and its labels, and per probe set the probes'
    prompts (as the evaluator encodes them), with the probe set's scorer."""

    edit: list[tuple[int, ...]]
    labels: list[tuple[tuple[int, ...], float]]
    probes: dict[str, list[tuple[int, int, tuple[int, ...]]]]  # set -> [(case index, probe index, ids)]
    scorer: dict[str, str]

    def all_ids(self) -> list[tuple[int, ...]]:
        return self.edit + [ids for items in self.probes.values() for _, _, ids in items]


def stream_ids(model, cases) -> StreamIds:
    edit, labels, probes, scorer = [], [], {}, {}
    for ci, case in enumerate(cases):
        ids, n_prompt = model.encode_example(case.request.prompt, case.request.target)
        edit.append(tuple(ids[:n_prompt]))
        labels.append(edit_labels(model.batch([(ids, n_prompt)])))
        for name, ps in case.probes.items():
            scorer.setdefault(name, ps.scorer)
            for pi, p in enumerate(ps.probes):
                probes.setdefault(name, []).append((ci, pi, tuple(model.encode_prompt(p.prompt))))
    return StreamIds(edit, labels, probes, scorer)


# ------------------------------------------------------------------------------------- replay
def replay_edit(editor, q0: torch.Tensor, label: tuple[int, ...], ref_label: float) -> int:
    """The key / insertion step of `HoReN.edit` for one request whose pre-refinement query is
    `q0`, without value training (a new entry gets a zero value): the row its value would train."""
    s, j = editor.match(editor.refine(q0[None]))
    s, j = float(s[0]), int(j[0])
    if s > editor.tau and editor._same(j, label, ref_label):
        editor.cases["train_same_label"] += 1
        return j
    row = editor.book.add(q0, 0.0, label, ref_label)
    editor.cases["insert_no_match" if s <= editor.tau else "insert_conflict"] += 1
    return row


@torch.no_grad()
def route(editor, Q: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score, entry) per query after the editor's refinement, as its site wrapper decides at a
    prefill pass (a codebook holding only the dummy routes nothing: score -inf)."""
    if editor.book.n <= 1:
        return torch.full((len(Q),), -math.inf), torch.zeros(len(Q), dtype=torch.long)
    out = [editor.match(editor.refine(Q[k:k + chunk])) for k in range(0, len(Q), chunk)]
    return torch.cat([s for s, _ in out]).cpu(), torch.cat([j for _, j in out]).cpu()


def classify(s: torch.Tensor, j: torch.Tensor, own: np.ndarray, tau: float) -> np.ndarray:
    """OWN / WRONG / NO_MATCH per probe: matched (s > τ) to its own entry, to another, or to none
    (`own` -1: a probe with no entry of its own, so any match is WRONG)."""
    s, j = s.numpy(), j.numpy()
    hit = s > tau
    cat = np.full(len(s), NO_MATCH, dtype=np.int8)
    cat[hit & (j == own)] = OWN
    cat[hit & (j != own)] = WRONG
    return cat


def accuracy_rates(cat: np.ndarray, wrong_same_label: np.ndarray) -> dict:
    n = len(cat)
    return {"n": n, "own": _r((cat == OWN).mean()), "wrong": _r((cat == WRONG).mean()),
            "wrong_same_label": _r(((cat == WRONG) & wrong_same_label).mean()),
            "no_match": _r((cat == NO_MATCH).mean())}


def locality_rates(cat: np.ndarray, own_case: np.ndarray) -> dict:
    """False retrieval, and the part of it that lands on the entry of the probe's own case (a
    locality prompt that resembles its case's edit prompt)."""
    return {"n": len(cat), "false_retrieval": _r((cat != NO_MATCH).mean()), "own_case_entry": _r(own_case.mean())}


def _r(x, d: int = 5):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), d)


class Routed(NamedTuple):
    """One probe set at one checkpoint: per probe, its case index, probe index, category, score,
    entry, whether a wrong entry carries its own entry's label, and whether it matched the entry
    of its own case (for accuracy sets: category OWN)."""

    case: np.ndarray
    probe: np.ndarray
    cat: np.ndarray
    score: np.ndarray
    entry: np.ndarray
    same_label: np.ndarray
    own_case: np.ndarray


def evaluate(editor, n: int, sid: StreamIds, index: dict, QM: torch.Tensor, rows: list[int]) -> dict[str, Routed]:
    """Route every probe of the first n cases through the current codebook."""
    out = {}
    labels = editor.book.labels
    for name, items in sid.probes.items():
        items = [(ci, pi, ids) for ci, pi, ids in items if ci < n]
        case = np.array([ci for ci, _, _ in items], dtype=np.int64)
        Q = QM[torch.tensor([index[ids] for _, _, ids in items], dtype=torch.long)]
        s, j = route(editor, Q)
        case_row = np.array([rows[ci] for ci in case], dtype=np.int64)
        own = case_row if sid.scorer[name] != "locality" else np.full(len(case), -1)
        cat = classify(s, j, own, editor.tau)
        jj = j.numpy()
        same = np.array([c == WRONG and o >= 0 and labels[e] == labels[o] for c, e, o in zip(cat, jj, own)], dtype=bool)
        own_case = (cat != NO_MATCH) & (jj == case_row)
        out[name] = Routed(case, np.array([pi for _, pi, _ in items]), cat, s.numpy(), jj, same, own_case)
    return out


def case_weights(rng: np.random.Generator, n_cases: int) -> np.ndarray:
    """One bootstrap resample of the cases, as how many times each case was drawn (its probes
    weighted by it)."""
    return np.bincount(rng.integers(0, n_cases, n_cases), minlength=n_cases).astype(float)


def rate_intervals(routed: dict[str, Routed], sid: StreamIds, n_cases: int, boot: int, seed: int = 0) -> dict:
    """95 % bootstrap intervals over cases (a case's probes together) of each set's own-entry rate
    (accuracy sets) or false retrieval (locality sets)."""
    rng = np.random.default_rng(seed)
    W = np.stack([case_weights(rng, n_cases) for _ in range(boot)])
    out = {}
    for name, r in routed.items():
        locality = sid.scorer[name] == "locality"
        ind = (r.cat != NO_MATCH) if locality else (r.cat == OWN)
        w = W[:, r.case]  # boot x probes: each probe weighted by its case's draw count
        rates = (w * ind).sum(1) / np.maximum(w.sum(1), 1e-12)
        lo, hi = np.quantile(rates, [0.025, 0.975])
        out[name] = {"false_retrieval" if locality else "own": [_r(lo), _r(hi)]}
    return out


def summarize(routed: dict[str, Routed], sid: StreamIds) -> dict:
    return {name: (locality_rates(r.cat, r.own_case) if sid.scorer[name] == "locality"
                   else accuracy_rates(r.cat, r.same_label)) for name, r in routed.items()}


# ------------------------------------------------------------------------------------- the committed runs
def routing_hparams(hp: dict) -> dict:
    return {k: hp.get(k) for k in ROUTING_KEYS}


def same_routing(a: dict, b: dict) -> bool:
    for k in ROUTING_KEYS:
        x, y = a.get(k), b.get(k)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if not math.isclose(float(x), float(y), rel_tol=0, abs_tol=1e-9):
                return False
        elif x != y:
            return False
    return True


def find_runs(root: Path, cfg) -> list[dict]:
    """Committed HoReN-family runs of this model and stream: path, first metrics row, rows."""
    base = root / cfg.data.name / cfg.model.name / "horen"
    found = []
    for mj in sorted(base.glob("*/metrics.jsonl")):
        rows = [json.loads(x) for x in mj.read_text().splitlines() if x.strip()]
        if not rows:
            continue
        r0 = rows[0]
        info = r0.get("data_info") or {}
        if (r0.get("scoring") != cfg.protocol.scoring or bool(r0.get("chat_template")) != bool(cfg.model.chat_template)
                or info.get("order_seed") != cfg.data.get("order_seed")
                or info.get("skip", 0) != cfg.data.get("skip", 0)):
            continue
        found.append({"dir": mj.parent, "name": mj.parent.name, "method": r0["method"], "hparams": r0["hparams"],
                      "rows": {int(r["N"]): r for r in rows}})
    return found


def compare_checkpoint(run: dict, N: int, routed: dict[str, Routed], sid: StreamIds, cases) -> dict:
    """The run's metrics at N beside the routing rates; with its records, per-probe agreement."""
    row = run["rows"][N]
    names = list(sid.probes)
    out = {"N": N, "run": {k: _r(row.get(k)) for k in names if k in row}}
    records_file = runrecords.path(run["dir"], N)
    if not records_file.is_file():
        out["replay"] = summarize(routed, sid)
        out["records"] = False
        return out
    out["records"] = True
    recs = runrecords.read(records_file)
    case_index = {c.id: i for i, c in enumerate(cases)}
    score = {(case_index.get(r["case"], -1), r["set"], r["i"]): float(r["score"]) for r in recs}
    out["records_outside_stream"] = sum(1 for k in score if k[0] < 0 or k[0] >= N)
    for name, r in routed.items():
        keep = np.array([(c, name, p) in score for c, p in zip(r.case, r.probe)], dtype=bool)
        if not keep.any():
            continue
        sc = np.array([score[(c, name, p)] for c, p in zip(r.case[keep], r.probe[keep])])
        cat = r.cat[keep]
        if sid.scorer[name] == "locality":
            rates = locality_rates(cat, r.own_case[keep])
            fr = cat != NO_MATCH
            changed = 1.0 - sc
            share = changed[fr].mean() if fr.any() else float("nan")
            rates.update({
                "mean_change_retrieved": _r(share),
                "predicted": _r(1 - fr.mean() * (share if fr.any() else 0.0)),
                "probes_changed_not_retrieved": int(((sc < 1) & ~fr).sum()),
                "probes_changed_retrieved": int(((sc < 1) & fr).sum()),
                "probes_unchanged_retrieved": int(((sc == 1) & fr).sum()),
                "probes_unchanged_not_retrieved": int(((sc == 1) & ~fr).sum()),
            })
        else:
            rates = accuracy_rates(cat, r.same_label[keep])
            for c, label in ((OWN, "own"), (WRONG, "wrong"), (NO_MATCH, "no_match")):
                m = cat == c
                rates[f"score_{label}"] = _r(sc[m].mean()) if m.any() else None
                rates[f"right_{label}"] = int((sc[m] > 0).sum())
            rates["predicted"] = _r((cat == OWN).mean() * (sc[cat == OWN].mean() if (cat == OWN).any() else 0.0))
        out.setdefault("replay", {})[name] = rates
    return out


def check_state(run: dict, editor, rows_so_far: int) -> dict | None:
    """The replayed codebook against a run's checkpoint state at the same edit."""
    for d in sorted((run["dir"] / "ckpt").glob("step_*")):
        step = int(d.name.split("_")[1])
        if step != rows_so_far or not (d / "state.pt").is_file():
            continue
        st = torch.load(d / "state.pt", weights_only=False, map_location="cpu")["editor"]
        K, book = st["book"]["keys"], editor.book
        same_n = K.shape[0] == book.n
        return {"run": run["name"], "step": step, "entries": int(K.shape[0]), "replayed_entries": book.n,
                "labels_equal": same_n and [tuple(x) for x in st["book"]["labels"]] == book.labels,
                "cases_equal": dict(st["cases"]) == dict(editor.cases), "cases": dict(st["cases"]),
                "key_max_abs_diff": float((K.float() - book.K.cpu().float()).abs().max()) if same_n else None}
    return None


def ckpt_steps(runs: list[dict]) -> set[int]:
    return {int(d.name.split("_")[1]) for r in runs for d in (r["dir"] / "ckpt").glob("step_*")}


# ------------------------------------------------------------------------------------- fit
def cloglog(p):
    return np.log(-np.log1p(-p))


def inv_cloglog(z):
    return -np.expm1(-np.exp(z))


def fit_curve(Ns, rates, ns, iters: int = 100) -> tuple[float, float]:
    """(a, b) of cloglog(rate) = a + b ln N: binomial maximum likelihood with ns[i] probes at Ns[i]
    (IRLS, from the least-squares fit of the rates clipped to [0.5/n, 1 - 0.5/n]; that start is
    returned as it is when no probe or every probe counts)."""
    x, y, n = np.log(np.asarray(Ns, float)), np.asarray(rates, float), np.asarray(ns, float)
    b, a = np.polyfit(x, cloglog(np.clip(y, 0.5 / n, 1 - 0.5 / n)), 1)
    if not (y * n).sum() > 0 or not ((1 - y) * n).sum() > 0:
        return float(a), float(b)
    X = np.stack([np.ones_like(x), x], 1)
    for _ in range(iters):
        eta = np.clip(a + b * x, -30.0, 3.0)
        mu = np.clip(inv_cloglog(eta), 1e-12, 1 - 1e-12)
        d = np.maximum(np.exp(eta - np.exp(eta)), 1e-300)  # d mu / d eta
        w = n * d**2 / (mu * (1 - mu))
        z = eta + (y - mu) / d
        a2, b2 = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * z))
        done = abs(a2 - a) + abs(b2 - b) < 1e-10
        a, b = a2, b2
        if done:
            break
    return float(a), float(b)


def project(a: float, b: float, N: float) -> float:
    return float(inv_cloglog(a + b * math.log(N)))


def fit_rate(points: list[tuple[int, np.ndarray, np.ndarray]], n_cases: int, boot: int, seed: int = 0,
             to: int = PROJECT_N) -> dict:
    """points: (N, case index per probe, 0/1 indicator per probe) at each checkpoint fitted. The
    fit, its projection to `to` with a 95 % interval from `boot` bootstrap resamples of the cases
    (every checkpoint's rate recomputed from the same resample, then refitted), and a held-out check
    (fitted without the last point, predicting it)."""
    Ns = [N for N, _, _ in points]
    rates = [ind.mean() for _, _, ind in points]
    ns = [len(ind) for _, _, ind in points]
    a, b = fit_curve(Ns, rates, ns)
    band_N = [int(round(x)) for x in np.geomspace(Ns[-1], to, 8)]  # from the last measured N to `to`
    rng = np.random.default_rng(seed)
    proj = np.empty((boot, len(band_N)))
    for k in range(boot):
        w = case_weights(rng, n_cases)
        rb = [float((w[ci] * ind).sum() / max(w[ci].sum(), 1e-12)) for _, ci, ind in points]
        ab, bb = fit_curve(Ns, rb, ns)
        proj[k] = [project(ab, bb, N) for N in band_N]
    lo, hi = np.quantile(proj, 0.025, axis=0), np.quantile(proj, 0.975, axis=0)
    band = [{"N": N, "estimate": _r(project(a, b, N)), "lo": _r(lo[i]), "hi": _r(hi[i])} for i, N in enumerate(band_N)]
    out = {"form": "cloglog(rate) = a + b ln N, binomial maximum likelihood", "a": _r(a), "b": _r(b), "fit_N": Ns,
           "observed": [_r(x) for x in rates], "fitted": [_r(project(a, b, N)) for N in Ns],
           "projection": {**band[-1], "boot": boot}, "band": band}
    if len(points) >= 3:
        ah, bh = fit_curve(Ns[:-1], rates[:-1], ns[:-1])
        out["holdout"] = {"fit_N": Ns[:-1], "N": Ns[-1], "predicted": _r(project(ah, bh, Ns[-1])),
                          "observed": _r(rates[-1])}
    return out


def complement(fit: dict) -> dict:
    """A fit of 1 - rate read as a fit of the rate (own entry from its complement)."""
    one = lambda x: None if x is None else _r(1 - x)  # noqa: E731
    flip = lambda q: {**q, "estimate": one(q["estimate"]), "lo": one(q["hi"]), "hi": one(q["lo"])}  # noqa: E731
    out = dict(fit, form=fit["form"].replace("cloglog(rate)", "cloglog(1 - rate)"),
               observed=[one(x) for x in fit["observed"]], fitted=[one(x) for x in fit["fitted"]],
               projection=flip(fit["projection"]), band=[flip(q) for q in fit["band"]])
    if "holdout" in fit:
        out["holdout"] = dict(fit["holdout"], predicted=one(fit["holdout"]["predicted"]),
                              observed=one(fit["holdout"]["observed"]))
    if "all_grid" in fit:
        out["all_grid"] = complement(fit["all_grid"])
    return out


def fit_quantity(pts: list[tuple[int, np.ndarray, np.ndarray]], n_cases: int, boot: int, fit_from: int) -> dict:
    """The fit over the checkpoints N >= fit_from (all of them when fewer than 3 are), and, when
    that window leaves points out, the same fit over every checkpoint (`all_grid`): how much the
    projection depends on the window."""
    window = [p for p in pts if p[0] >= fit_from]
    if len(window) < 3:
        window = pts
    out = fit_rate(window, n_cases, boot)
    if len(window) < len(pts):
        out["all_grid"] = fit_rate(pts, n_cases, boot)
    return out


def fit_variant(curves: dict[int, dict[str, Routed]], sid: StreamIds, grid: list[int], n_cases: int, boot: int,
                fit_from: int = FIT_FROM) -> dict:
    """Per probe set: own-entry (fitted through its complement), wrong-entry and no-match rates of
    accuracy sets, false retrieval of locality sets."""
    fits = {}
    for name, scorer in sid.scorer.items():
        pts = [(N, curves[N][name]) for N in grid if name in curves.get(N, {})]
        if len(pts) < 3:
            continue

        def fit(indicator):
            return fit_quantity([(N, r.case, indicator(r).astype(float)) for N, r in pts], n_cases, boot, fit_from)

        if scorer == "locality":
            fits[name] = {"false_retrieval": fit(lambda r: r.cat != NO_MATCH)}
            continue
        fits[name] = {"own": complement(fit(lambda r: r.cat != OWN)), "wrong": fit(lambda r: r.cat == WRONG),
                      "no_match": fit(lambda r: r.cat == NO_MATCH)}
    return fits


# ------------------------------------------------------------------------------------- one variant
def replay_variant(name: str, run, sid: StreamIds, index: dict, QM: torch.Tensor, checkpoints: list[int],
                   runs: list[dict], grid: list[int], boot: int, intervals: bool = False) -> dict:
    editor, cases = run.editor, run.cases
    hp = routing_hparams(editor.hparams)
    mine = [r for r in runs if same_routing(routing_hparams(r["hparams"]), hp)]
    steps = ckpt_steps(mine)
    rows, per_n, curves, state_checks = [], [], {}, []
    t0 = time.perf_counter()
    last = max(checkpoints)
    for i in range(last):
        rows.append(replay_edit(editor, QM[index[sid.edit[i]]], *sid.labels[i]))
        n = i + 1
        if n in steps:
            state_checks += [c for c in (check_state(r, editor, n) for r in mine) if c is not None]
        if n in checkpoints:
            te = time.perf_counter()
            routed = evaluate(editor, n, sid, index, QM, rows)
            curves[n] = routed
            per_n.append({"N": n, "entries": editor.book.n - 1, "cases": dict(editor.cases), **summarize(routed, sid),
                          "route_s": round(time.perf_counter() - te, 1)})
            if intervals:
                per_n[-1]["ci"] = rate_intervals(routed, sid, n, boot)
            log(f"{name} N={n}: entries {editor.book.n - 1}, " + ", ".join(
                f"{k} own {v['own']:.3f}" if "own" in v else f"{k} FR {v['false_retrieval']:.3f}"
                for k, v in per_n[-1].items() if isinstance(v, dict) and "n" in v))
    chunk_check = None
    if editor.steps > 0:  # the refinement's stop test is per batch: does chunking change a decision?
        probe_set = next(iter(sid.probes))
        Q = QM[torch.tensor([index[ids] for _, _, ids in sid.probes[probe_set][:64]], dtype=torch.long)]
        s1, j1 = route(editor, Q)
        s2, j2 = zip(*(route(editor, Q[k:k + 1]) for k in range(len(Q))))
        chunk_check = {"probes": len(Q), "entry_equal": bool(torch.equal(j1, torch.cat(j2))),
                       "score_max_abs_diff": float((s1 - torch.cat(s2)).abs().max())}
    comparisons = []
    for r in mine:
        comparisons.append({"run": r["name"], "method": r["method"],
                            "checkpoints": [compare_checkpoint(r, N, curves[N], sid, cases)
                                            for N in sorted(r["rows"]) if N in curves]})
    return {"name": name, "method": editor.method, "routing": hp, "per_N": per_n,
            "fit": {} if intervals else fit_variant(curves, sid, grid, len(rows), boot), "runs": comparisons,
            "state_checks": state_checks,
            "chunk_check": chunk_check, "replay_s": round(time.perf_counter() - t0, 1), "_curves": curves}


def projected_metrics(var: dict) -> list[dict]:
    """Gen / Loc at the projection from the projected routing rates and each matched run's
    score shares at its largest checkpoint with records (held fixed: an assumption)."""
    out = []
    for comp in var["runs"]:
        ref = next((c for c in reversed(comp["checkpoints"]) if c.get("records")), None)
        if ref is None:
            continue
        item = {"run": comp["run"], "shares_from_N": ref["N"]}
        for name, rates in ref["replay"].items():
            f = var["fit"].get(name, {})
            if "own" in f and rates.get("score_own") is not None:
                p = f["own"]["projection"]
                s = rates["score_own"]
                item[name] = {"metric": "own x score_own", "score_own": s, "estimate": _r(p["estimate"] * s),
                              "lo": _r(p["lo"] * s), "hi": _r(p["hi"] * s)}
            elif "false_retrieval" in f and rates.get("mean_change_retrieved") is not None:
                p = f["false_retrieval"]["projection"]
                c = rates["mean_change_retrieved"]
                item[name] = {"metric": "1 - false_retrieval x mean_change_retrieved", "mean_change_retrieved": c,
                              "estimate": _r(1 - p["estimate"] * c), "lo": _r(1 - p["hi"] * c),
                              "hi": _r(1 - p["lo"] * c)}
        out.append(item)
    return out


# ------------------------------------------------------------------------------------- main
def query_checks(model, editor, cases, index: dict, QM: torch.Tensor, sid: StreamIds, k: int = 4) -> dict:
    """Batched, cached queries against the editor's own computation on one unpadded prompt: the
    edit path (prompt + target, `HoReN.edit`) and the probe path (the prompt alone)."""
    order = sorted(range(len(cases)), key=lambda i: len(sid.edit[i]))
    pick = sorted({order[0], order[-1], order[len(order) // 3], order[2 * len(order) // 3]})[:k]
    edit_d, probe_d = [], []
    for i in pick:
        edit_d.append(float((edit_query(model, editor, cases[i].request) - QM[index[sid.edit[i]]]).abs().max()))
        for name, ps in cases[i].probes.items():
            for p in ps.probes:
                ids = tuple(model.encode_prompt(p.prompt))
                probe_d.append(float((prompt_query(model, editor, p.prompt) - QM[index[ids]]).abs().max()))
    return {"cases": pick, "edit_max_abs_diff": max(edit_d), "probe_max_abs_diff": max(probe_d),
            "edit_ids_differ_from_prompt_ids": sum(1 for i, c in enumerate(cases)
                                                   if sid.edit[i] != tuple(model.encode_prompt(c.request.prompt)))}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--study", choices=("capacity", "damping"), default="capacity")
    ap.add_argument("--n", type=int, default=max(GRID))
    ap.add_argument("--out", type=Path, default=REPO / "results" / "capacity")
    ap.add_argument("--runs", type=Path, default=REPO / "results")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    started = datetime.now(timezone.utc)
    cfg = compose_cfg(args.overrides)
    if not str(cfg.editor._target_).endswith(".HoReN"):
        raise SystemExit(f"editor={cfg.editor.name}: this study replays HoReN's codebook — use editor=horen")
    torch.set_num_threads(int(cfg.threads or 1))
    quiet = lambda *_: None  # noqa: E731
    tau = float(cfg.editor.threshold)
    damping = args.study == "damping"
    plan = damping_variants() if damping else variants(tau)

    data = instantiate_group(cfg.data)
    pool = len(data.records()) - int(cfg.data.get("skip") or 0)
    n = min(args.n, pool)
    runs = find_runs(args.runs, cfg)
    checkpoints = sorted({N for N in GRID if N <= n} | {n} | {N for r in runs for N in r["rows"] if N <= n})
    grid = sorted({N for N in GRID if N <= n} | {n})
    log(f"{cfg.data.name}: {n} of {pool} cases, checkpoints {checkpoints}, runs: {[r['name'] for r in runs]}")

    result = {"study": args.study, "data": cfg.data.name, "model": cfg.model.name, "n_cases": n, "pool": pool,
              "grid": grid,
              "checkpoints": checkpoints, "overrides": args.overrides, "commit": git_hash(),
              "started": started.isoformat(timespec="seconds"),
              "config": {"editor": OmegaConf.to_container(cfg.editor, resolve=True),
                         "model": {k: OmegaConf.to_container(cfg.model, resolve=True).get(k)
                                   for k in ("name", "source", "dtype", "chat_template", "edit_site")},
                         "data": OmegaConf.to_container(cfg.data, resolve=True), "seed": int(cfg.seed),
                         "scoring": cfg.protocol.scoring},
              "fit": {"form": "cloglog(rate) = a + b ln N, binomial maximum likelihood", "from_N": FIT_FROM,
                      "project_to": PROJECT_N, "boot": args.boot, "interval": "95 % bootstrap over cases"},
              "variants": [], "checks": {}}
    sid = index = QM = shared = None
    for k, (name, extra) in enumerate(plan):
        vcfg = compose_cfg(args.overrides + extra)
        t0 = time.perf_counter()
        run = build(vcfg, n_cases=n, references=False, log=quiet)
        log(f"{name}: built in {time.perf_counter() - t0:.0f}s (tau {run.editor.tau}, M {run.editor.steps})")
        if k == 0:
            sid = stream_ids(run.model, run.cases)
            cache = query_cache(vcfg, run.editor)
            have, cost = pooled_queries(run.model, run.editor, sid.all_ids(), cache, args.batch_size,
                                        states=run.evaluator.prompt_states)
            meta_path = Path(cache.path).with_suffix(".json")
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"computed": 0, "seconds": 0.0}
            if cost["computed"]:
                meta = {"computed": meta["computed"] + cost["computed"],
                        "seconds": round(meta["seconds"] + cost["seconds"], 1),
                        "threads": cost["threads"], "batch_size": cost["batch_size"]}
                meta_path.write_text(json.dumps(meta, indent=1))
            result["queries"] = {**cost, "file": str(cache.path), "cache_totals": meta}
            log(f"queries: {cost}")
            uniq = list(have)
            index = {s: i for i, s in enumerate(uniq)}
            QM = torch.stack([have[s] for s in uniq]).to(run.model.device)
            result["checks"]["query_vs_editor"] = query_checks(run.model, run.editor, run.cases, index, QM, sid)
            log(f"query check: {result['checks']['query_vs_editor']}")
            shared = (run.editor.rho, run.editor.normalize)
        elif (run.editor.rho, run.editor.normalize) != shared:  # every variant routes the same pooled queries
            raise SystemExit(f"{name}: rho / normalize differ from {plan[0][0]}'s — the cached queries do not apply")
        var = replay_variant(name, run, sid, index, QM, checkpoints, runs, grid, args.boot, intervals=damping)
        var.pop("_curves")
        var["overrides"] = extra
        var["alpha"], var["steps"] = float(run.editor.alpha), int(run.editor.steps)
        var["projected_metrics"] = [] if damping else projected_metrics(var)
        result["variants"].append(var)
        del run
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{cfg.data.name}_{cfg.model.name}{'_damping' if damping else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
