"""ROME, AlphaEdit and UltraEdit (docs/editors.md#rome, #alphaedit, #ultraedit) and the second-moment statistics they use.

Each check is against an independent computation on a tiny random model: C against Σ k kᵀ from
the adapter's own site inputs; ROME's update against its rank-one form; AlphaEdit's against the
null-space projector; UltraEdit's keys / gradients against a plain HF forward with −100 labels,
and its normaliser against a hand-computed case. The editor conformance test covers state,
resume and the evaluator for all three.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CACHE_DIR, build_editor, compose_config, load_script, spy  # noqa: E402

from editbench.errors import EditbenchError  # noqa: E402
from editbench.models import EditSite, load_model  # noqa: E402

TEXTS = ["The river flows north through the valley towards the old town.",
         "In 1901 the railway reached the harbour, and trade grew quickly.",
         "She wrote three novels, two of which were adapted for the stage.",
         "The species is found in forests across the southern mountains.",
         "Its population was 4,512 at the census, up from 3,900 a decade earlier.",
         "The album was recorded in London and released the following spring."]


@pytest.fixture
def corpus_file(tmp_path):
    """A tiny statistics corpus built in the test (8 x the texts above, one JSON object per line)."""
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps({"text": f"{t} ({i})"}) + "\n" for i in range(8) for t in TEXTS))
    return p


@pytest.fixture(scope="module")
def model():
    return load_model(compose_config(["model=tiny_llama"]).model)


# ----------------------------------------------------------------------------- statistics
def test_second_moment_equals_sum_of_outer_products_and_is_cached(model, corpus_file, tmp_path, monkeypatch):
    from editbench import stats

    corpus = stats.load_corpus(str(corpus_file), 48)
    sites = [EditSite(0, "mlp.down_proj"), EditSite(1, "mlp.down_proj")]
    mom = stats.second_moments(model, sites, corpus, tmp_path / "c", max_length=64, batch_tokens=100)
    assert mom.info["cached"] is False and mom.info["texts"] == 48
    for s in sites:  # independently: the adapter's site inputs, one text at a time
        total, n = torch.zeros_like(mom.C[(s.layer, s.module)], dtype=torch.float64), 0
        for t in corpus.texts:
            ids = model.tok(t, truncation=True, max_length=64).input_ids
            x, _ = model.site_io(model.batch([(ids, len(ids))]), s)
            total += x[0].double().T @ x[0].double()
            n += len(ids)
        assert mom.info["tokens"] == n
        torch.testing.assert_close(mom.C[(s.layer, s.module)], (total / n).float(), rtol=1e-5, atol=1e-6)
    files = sorted((tmp_path / "c" / "stats").glob("*.pt"))
    assert len(files) == 2 and all("tiny_llama__L" in f.name and "__n48__" in f.name for f in files)

    # a later run loads the cache: nothing is recomputed
    monkeypatch.setattr(stats, "_accumulate", lambda *a, **k: pytest.fail("recomputed a cached statistic"))
    again = stats.second_moments(model, sites[:1], corpus, tmp_path / "c", max_length=64)
    assert again.info["cached"] is True
    assert torch.equal(again.C[(0, "mlp.down_proj")], mom.C[(0, "mlp.down_proj")])


def test_statistics_cache_key_names_sample_count_corpus_and_length(model, corpus_file, tmp_path):
    from editbench import stats

    site = [EditSite(0, "mlp.down_proj")]
    stats.second_moments(model, site, stats.load_corpus(str(corpus_file), 48), tmp_path, max_length=64)
    stats.second_moments(model, site, stats.load_corpus(str(corpus_file), 40), tmp_path, max_length=64)
    stats.second_moments(model, site, stats.load_corpus(str(corpus_file), 40), tmp_path, max_length=8)
    corpus_file.write_text(corpus_file.read_text().replace("river", "stream"))
    stats.second_moments(model, site, stats.load_corpus(str(corpus_file), 40), tmp_path, max_length=8)
    assert len(list((tmp_path / "stats").glob("*.pt"))) == 4


def test_statistics_cache_key_names_the_method_version(model, corpus_file, tmp_path, monkeypatch):
    """A change to how C is computed bumps METHOD_VERSION; the old cache file is then not read."""
    from editbench import stats

    site, corpus = [EditSite(0, "mlp.down_proj")], stats.load_corpus(str(corpus_file), 8)
    stats.second_moments(model, site, corpus, tmp_path, max_length=64)
    monkeypatch.setattr(stats, "METHOD_VERSION", stats.METHOD_VERSION + 1)
    assert stats.second_moments(model, site, corpus, tmp_path, max_length=64).info["cached"] is False
    assert len(list((tmp_path / "stats").glob("*.pt"))) == 2


def test_interrupted_statistics_leave_no_complete_looking_file(model, corpus_file, tmp_path, monkeypatch):
    from editbench import stats

    def crash(obj, f, *a, **k):  # half a file written, then an interrupt
        f.write(b"partial") if hasattr(f, "write") else Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(stats.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        stats.second_moments(model, [EditSite(0, "mlp.down_proj")], stats.load_corpus(str(corpus_file), 8),
                             tmp_path, max_length=64)
    assert list((tmp_path / "stats").glob("*.pt")) == []


def test_statistics_corpus_errors(tmp_path, corpus_file):
    from editbench import stats

    with pytest.raises(EditbenchError, match="not found — use editor.mom2_dataset=wikitext2"):
        stats.load_corpus(str(tmp_path / "nope.jsonl"), 10)
    with pytest.raises(EditbenchError, match="holds 48 non-empty texts but editor.mom2_n_samples=100 — lower"):
        stats.load_corpus(str(corpus_file), 100)
    assert len(stats.load_corpus("wikitext2", 4026).texts) == 4026  # the shipped corpus


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("overrides,expect", [
    (["editor=rome", "editor.layer=7"], "editor.layer=7 names layer(s) [7] outside model tiny_llama (0..3)"),
    (["editor=rome", "editor.layer=null"], "editor=rome has no layer for model tiny_llama — add "
                                           "conf/editor_model/rome_tiny_llama.yaml"),
    (["editor=alphaedit", "editor.layers=[1,4]"], "names layer(s) [4] outside model"),
    (["editor=ultraedit", "editor.edit_modules={mlp.up_proj:[9]}"], "names layer(s) [9] outside model"),
    (["editor=ultraedit", "~editor.edit_modules", "+editor.edit_modules={mlp.nope:[1]}"],
     "no module 'mlp.nope' in decoder block 1"),
])
def test_bad_layers_are_refused(overrides, expect):
    from editbench.build import instantiate_group

    cfg = compose_config(overrides)
    with pytest.raises(EditbenchError, match=re.escape(expect)):
        instantiate_group(cfg.editor, model=load_model(cfg.model))


def test_singular_second_moment_is_refused(tmp_path):
    p = tmp_path / "small.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:2]))  # ~30 tokens < d_ff = 128
    with pytest.raises(EditbenchError, match="singular or ill-conditioned .* raise editor.mom2_n_samples"):
        build_editor("rome", f"editor.mom2_dataset={p}", "editor.mom2_n_samples=2")


# ----------------------------------------------------------------------------- subject lookup
def test_subject_last_token_on_smollm2():
    from editbench.editors._locate import subject_last
    from editbench.models import load_prompt_format

    fmt, _ = load_prompt_format(compose_config(["model=smollm2_135m"], tiny=False).model)
    # ids pinned in test_tokenization: [504, 3575, 282, 4649, 314] / [10576, 314, 260, 6510, 282, 32298, 47]
    assert subject_last(fmt, "The capital of France is", "France") == 3
    assert subject_last(fmt, "Who is the director of Titanic?", "Titanic") == 5
    assert subject_last(fmt, "Who is the director of Titanic?", "the director") == 3
    with pytest.raises(EditbenchError, match="subject 'Paris' is not in prompt"):
        subject_last(fmt, "The capital of France is", "Paris")


# ----------------------------------------------------------------------------- ROME
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_rome_update_is_rank_one_along_inverse_covariance_key_and_writes_delta(arch, zsre_records, monkeypatch):
    from editbench.editors import _locate

    m, ed, _ = build_editor("rome", model=arch)
    r = zsre_records[0].request
    site = ed.site
    W0 = m.module_at(site).weight.detach().clone()
    batch, look = _locate.prompt_rows(m, ed.templates, r.prompt, r.subject)
    k_star = _locate.at_lookup(m.site_io(batch, site)[0], look).mean(0).double()
    b0, l0 = _locate.prompt_rows(m, ["{}"], r.prompt, r.subject)
    y_before = _locate.at_lookup(m.site_io(b0, site)[1], l0)[0]
    import editbench.editors.rome as rome_mod
    captured = spy(monkeypatch, rome_mod, "optimise_delta")
    ed.edit([r])
    dW = (m.module_at(site).weight.detach() - W0).double()
    s = torch.linalg.svdvals(dW)
    assert s[1] < 1e-6 * s[0]  # rank one
    C = torch.cholesky_solve(k_star[:, None], ed.C_chol)[:, 0]
    u = C / C.norm()
    row = torch.linalg.svd(dW).Vh[0]
    assert abs(abs(float(row @ u)) - 1) < 1e-5  # along C^-1 k*
    y_after = _locate.at_lookup(m.site_io(b0, site)[1], l0)[0]
    torch.testing.assert_close(y_after - y_before, captured["result"].delta, rtol=1e-4, atol=1e-5)  # o + δ = v*


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_rome_delta_is_the_change_of_the_mlp_output(arch, zsre_records):
    """ROME's δ is a change of the MLP (down_proj) output at the subject's last token. A LLaMA block
    adds that output to the residual as it is, so δ is optimised on the residual stream; a Gemma-3
    block normalises it first (`post_feedforward_layernorm`), so δ is optimised on the down_proj
    output itself. Either way the loss `optimise_delta` reports is the model's loss with δ added to
    the down_proj output, computed here by a plain forward pass."""
    from editbench.editors import _locate
    from editbench.models import Pass

    m, ed, _ = build_editor("rome", model=arch)
    assert m.output_reaches_residual(ed.site) is (arch == "tiny_llama")
    assert (ed.delta_at is None) is (arch == "tiny_llama")
    r = zsre_records[0].request
    rows = _locate.edit_rows(m, ed.templates[:3], r.prompt, r.subject, r.target, None)  # no KL row
    res = _locate.optimise_delta(m, rows, ed.site.layer, 1.0, 0.5, 4, 0.0, 0.0, 100.0, at=ed.delta_at)
    assert res.steps == 3 and float(res.delta.norm()) > 0

    def add(_m, _a, y):
        y = y.clone()
        y[torch.arange(y.shape[0]), rows.lookup] += res.delta
        return y

    b = rows.batch
    hook = m.module_at(ed.site).register_forward_hook(add)
    try:
        with torch.no_grad(), m.bind(Pass("prefill", b.prompt_mask)):
            logits = m.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                             use_cache=False).logits
    finally:
        hook.remove()
    nxt = b.predicts_label
    nll = -torch.log_softmax(logits[nxt].float(), -1).gather(1, b.labels[:, 1:][nxt[:, :-1]][:, None])[:, 0]
    rows_of = torch.nonzero(nxt)[:, 0]
    per_row = torch.zeros(rows.n_edit).index_add(0, rows_of, nll) / torch.bincount(rows_of).float()
    assert float(per_row.mean()) == pytest.approx(res.loss, rel=1e-4)


def test_evaluator_does_not_reuse_unedited_states_above_a_weight_edit(zsre_records):
    """Editors below the HoReN site: the runner reuses states only below their lowest layer; the
    states entering the edit site are stale after a ROME edit, and using them would be wrong."""
    from editbench.evaluate import Evaluator
    from editbench.metrics import OP

    m, ed, _ = build_editor("rome", "editor.v_lr=5.0")
    cases = zsre_records[:4]
    pre = Evaluator(m, "teacher_forced").reference(cases)
    ev = Evaluator(m, "teacher_forced", batch_size=2)
    ids = m.encode_prompt(cases[0].request.prompt)
    cached = ev._site_states([ids], m.site.layer)[0]  # the unedited states entering the HoReN site
    for c in cases:
        ed.edit([c.request])
    assert min(s.layer for s in ed.touches()) == 1 < m.site.layer
    plain = ev.evaluate(ed.module(), cases, pre, None, OP)
    assert ev.evaluate(ed.module(), cases, pre, 1, OP) == plain  # what the runner does: below layer 1
    now = m.prefix(m.batch([(ids, len(ids))]), layer=m.site.layer).h[0]
    assert torch.equal(ev._site_states([ids], m.site.layer)[0], cached)  # the cache still holds unedited states
    assert not torch.allclose(now, cached)  # which a ROME edit below the site has made stale


# ----------------------------------------------------------------------------- AlphaEdit
def test_alphaedit_updates_stay_in_the_null_space_and_accumulate_keys(zsre_records, tmp_path):
    from editbench import stats

    # a threshold at the median eigenvalue: half of each layer's key space is protected
    corpus = stats.load_corpus("wikitext2", 300)
    C = stats.second_moments(load_model(compose_config(["model=tiny_llama"]).model),
                             [EditSite(1, "mlp.down_proj")], corpus, CACHE_DIR, 2048).C[(1, "mlp.down_proj")]
    thr = float(torch.linalg.eigvalsh(C.double()).median())
    m, ed, _ = build_editor("alphaedit", f"editor.nullspace_threshold={thr}")
    assert 0 < ed.stats_info["null_space_dims"][1] < 128
    W0 = [m.module_at(s).weight.detach().clone() for s in ed.sites]
    r = zsre_records[0].request
    ed.edit([r])
    for s, w0, P in zip(ed.sites, W0, ed.P):
        dW = ed.deltas.delta[f"{s.layer}.{s.module}.weight"].double()  # d_out x d_in, as added to the weight
        torch.testing.assert_close(m.module_at(s).weight.detach(), w0 + dW.float())
        assert dW.abs().max() > 0
        I = torch.eye(P.shape[0], dtype=P.dtype)  # keys in the protected space see no change
        torch.testing.assert_close(dW @ (I - P), torch.zeros_like(dW), rtol=0, atol=1e-5 * float(dW.abs().max()))
    for i, s in enumerate(ed.sites):  # P C_p with C_p = the edited model's keys of this edit
        k = ed._keys(r, s)
        assert torch.equal(ed.PC[i], torch.outer(ed.P[i] @ k, k))  # the key of the edit itself, bit for bit


def test_alphaedit_reads_a_checkpoint_that_holds_c_p(zsre_records):
    """A checkpoint written before the editor kept P C_p holds C_p (float32): it loads as P C_p."""
    m, ed, _ = build_editor("alphaedit")
    ed.edit([zsre_records[0].request])
    old = ed.state_dict()
    g = torch.Generator().manual_seed(0)
    Cp = [(lambda a: (a @ a.T).float())(torch.randn(P.shape[0], 3, generator=g)) for P in ed.P]
    ed.load_state_dict({"deltas": old["deltas"], "Cp": Cp, "templates": old["templates"]})
    for P, c, pc in zip(ed.P, Cp, ed.PC):
        assert pc.dtype == torch.float64 and torch.equal(pc, P @ c.double())


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_site_change_for_moves_the_block_output_by_the_asked_change(arch, zsre_records):
    """The down_proj output change that moves its block's output by r: r itself in a LLaMA block
    (returned as given); in a Gemma-3 block, which normalises the MLP output before adding it, a
    change found through the block whose effect, measured here by a hooked block run, is r."""
    from editbench.editors import _locate

    m = load_model(compose_config([f"model={arch}"]).model)
    site = EditSite(1, "mlp.down_proj")
    r0 = zsre_records[0].request
    b0, l0 = _locate.prompt_rows(m, ["{}"], r0.prompt, r0.subject)
    pos = int(l0[0])
    h = m.prefix(b0, layer=1).h

    def effect(d):
        def add(_m, _a, y):
            y = y.clone()
            y[:, pos] += d.to(y.dtype)
            return y
        handle = m.module_at(site).register_forward_hook(add)
        try:
            with torch.no_grad():
                moved = m.run_block(1, h, b0)
        finally:
            handle.remove()
        with torch.no_grad():
            base = m.run_block(1, h, b0)
        others = torch.ones(moved.shape[1], dtype=torch.bool)
        others[pos] = False
        assert torch.equal(moved[0, others], base[0, others])  # no other position moves
        return (moved - base)[0, pos].double()

    g = torch.Generator().manual_seed(0)
    y = m.site_io(b0, site)[1][0, pos]
    d_true = 0.3 * y.norm() * torch.randn(y.shape[-1], generator=g) / y.shape[-1] ** 0.5
    r = effect(d_true)  # a change the block can make
    d = m.site_change_for(site, b0, pos, r)
    if arch == "tiny_llama":
        assert d is r and m.output_reaches_residual(site)
    else:
        assert not m.output_reaches_residual(site) and not torch.allclose(d, r)
        assert float((effect(d) - r).norm()) < 1e-3 * float(r.norm())


# ----------------------------------------------------------------------------- UltraEdit
def test_running_moments_by_hand():
    from editbench.editors.ultraedit import RunningMoments

    rm = RunningMoments(1, "cpu")
    rm.update(torch.tensor([[1.0], [3.0]]))  # n 2, mean 2, M2 = 2 * var_unbiased(=2) = 4
    assert rm.n == 2 and float(rm.mean) == 2.0 and float(rm.m2) == 4.0
    rm.update(torch.tensor([[5.0], [7.0], [9.0]]))  # b 3, batch mean 7, var 4, d = 5
    # mean 2 + 3*5/5 = 5; M2 = 4 + 3*4 + 2*3*25/5 = 46; std = sqrt(46 / 4)
    assert float(rm.mean) == 5.0 and float(rm.m2) == 46.0
    assert abs(float(rm.std) - (46 / 4) ** 0.5) < 1e-12
    rm.update(torch.tensor([[5.0]]))  # a single row: no within-batch variance
    assert rm.n == 6 and float(rm.mean) == 5.0 and float(rm.m2) == 46.0


def test_ultraedit_keys_gradients_and_ridge_update_match_a_plain_hf_backward(zsre_records):
    m, ed, _ = build_editor("ultraedit")
    r = zsre_records[1].request
    ids, n_prompt = m.encode_example(r.prompt, r.target)
    W0 = {(s.layer, s.module): m.module_at(s).weight.detach().clone() for s in ed.sites}
    # independently: the full HF model with -100 labels (HF shifts them), grads kept on module outputs
    got = {}

    def hook(key):
        def f(_mod, args, out):
            out.retain_grad()
            got[key] = (args[0].detach(), out)
        return f

    hs = [m.module_at(s).register_forward_hook(hook((s.layer, s.module))) for s in ed.sites]
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :n_prompt] = -100
    emb = m.model.model.embed_tokens(x).detach().requires_grad_(True)
    from editbench.models import Pass
    with torch.enable_grad(), m.bind(Pass("unedited", torch.ones_like(x, dtype=torch.bool))):
        m.model(inputs_embeds=emb, labels=labels).loss.backward()
    for h in hs:
        h.remove()
    ed.edit([r])
    from editbench.editors.ultraedit import RunningMoments
    norms = {}
    for s in ed.sites:
        K, y = got[(s.layer, s.module)]
        shape = (K.shape[-1], y.shape[-1])
        norms.setdefault(shape, RunningMoments(sum(shape), "cpu")).update(torch.cat([K[0], y.grad[0]], -1))
    for s in ed.sites:
        K, y = got[(s.layer, s.module)]
        K, G = K[0].double(), y.grad[0].double()
        z = norms[(K.shape[1], G.shape[1])].normalise(torch.cat([K, G], -1))
        V = -1e-6 * z[:, :K.shape[1]].square().sum(-1, keepdim=True) * z[:, K.shape[1]:]
        shift = torch.linalg.solve(K.T @ K + torch.eye(K.shape[1], dtype=K.dtype), K.T @ V)
        dW = ed.deltas.delta[f"{s.layer}.{s.module}.weight"]
        torch.testing.assert_close(m.module_at(s).weight.detach(), W0[(s.layer, s.module)] + dW)
        torch.testing.assert_close(dW.double(), shift.T, rtol=1e-4, atol=1e-6 * float(shift.abs().max()))
        assert dW.abs().max() > 0
    assert ed.norms[(64, 128)].n == 2 * len(ids)  # both modules' rows, every real token (token: mask)


# ----------------------------------------------------------------------------- locality control
def test_locality_control_matches_the_update_norm_per_weight():
    """scripts/weight_edit_locality.py: the random control has, per edited weight, the editor's own
    ‖ΔW‖ (and 10x it); responses are measured on both prompt sets; a weight-preserving editor is
    refused with a one-line reason."""
    script = load_script("weight_edit_locality")
    rep = script.main(["editor=ultraedit", "model=tiny_llama", "editor.lr=1e-3", "n_edits=3"])
    assert rep["skip"] == 9000 and rep["n_edits"] == 3 and 0 <= rep["held_right_after"] <= 3
    assert set(rep["rel_dW"]) == {"1.mlp.gate_proj", "2.mlp.up_proj"} and min(rep["rel_dW"].values()) > 0
    for k, v in rep["rel_dW"].items():
        assert rep["control"]["1x"]["rel_dW"][k] == pytest.approx(v, abs=2e-5)
        assert rep["control"]["10x"]["rel_dW"][k] == pytest.approx(10 * v, rel=1e-3, abs=2e-5)
        for r in (rep, rep["control"]["1x"]):
            assert r["response_edit_prompts"][k] > 0 and r["response_loc_prompts"][k] > 0
    assert 0 <= rep["control"]["10x"]["loc"] <= 1
    with pytest.raises(SystemExit, match="changed no weight"):
        script.main(["editor=grace", "model=tiny_llama", "n_edits=1"])
