"""WISE on the tiny models: TIES (plain, and REPAIR's loss-weighted) against hand-computed cases,
the routing rule, memories saved and merged on schedule, resume across a save / merge boundary,
cached vs uncached decoding with memories in place, the aligned edit site, and one-line errors for
impossible settings."""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import hydra
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CACHE_DIR, CONF, build_editor, compose_config, load_script, resume_matches  # noqa: E402

from editbench.editors.base import Editor, SetupContext  # noqa: E402
from editbench.editors._side_memory import ties_merge  # noqa: E402
from editbench.editors.wise import WISE  # noqa: E402
from editbench.errors import EditbenchError  # noqa: E402
from editbench.evaluate import Evaluator  # noqa: E402
from editbench.metrics import OP  # noqa: E402
from editbench.models import Pass, load_model  # noqa: E402
from editbench.build import instantiate_group  # noqa: E402
from editbench.validate import check_target  # noqa: E402

SMALL = ["editor.save_freq=2", "editor.merge_freq=4", "editor.n_iter=8"]


build = functools.partial(build_editor, "wise")


# two task vectors for the TIES cases (base 0); density 0.5 keeps each one's 3 largest |entries|:
#   A -> [[3, 0, 0], [2, 0, -4]];  B -> [[1, 2, 0], [-3, 0, 0]]
TIES_A = torch.tensor([[3.0, -1.0, 0.5], [2.0, 0.0, -4.0]])
TIES_B = torch.tensor([[1.0, 2.0, -0.2], [-3.0, 0.1, -0.9]])


def test_ties_merge_by_hand():
    base, a, b = torch.zeros(2, 3), TIES_A, TIES_B
    # elected sign of the sum [[4, 2, 0], [-1, 0, -4]]: [[+, +, +], [-, +, -]]
    # mean of the agreeing non-zero entries: [[(3+1)/2, 2, 0], [-3, 0, -4]]
    expect = torch.tensor([[2.0, 2.0, 0.0], [-3.0, 0.0, -4.0]])
    torch.testing.assert_close(ties_merge(base, [a, b], 0.5), expect)
    torch.testing.assert_close(ties_merge(base + 1, [a + 1, b + 1], 0.5), expect + 1)  # deltas from the base


def test_weighted_ties_by_hand():
    """REPAIR's loss-weighted TIES (unequal coefficients: this module's own lines, not peft's)."""
    base, a, b = torch.zeros(2, 3), TIES_A, TIES_B
    # weights (0.75, 0.25): elected sign of sum w d = [[3, 0.5, 0], [0.75, 0, -3]] -> [[+,+,+],[+,+,-]]
    # (at [1,0] the weighted sum is +0.75: a's +2 wins, where equal weights elect -)
    # weighted mean of agreeing non-zeros: [0,0] (0.75*3 + 0.25*1) / 1 = 2.5; [0,1] 0.25*2 / 0.25 = 2;
    # [1,0] only a agrees: 2; [1,2] only a: -4
    expect = torch.tensor([[2.5, 2.0, 0.0], [2.0, 0.0, -4.0]])
    torch.testing.assert_close(ties_merge(base, [a, b], 0.5, [0.75, 0.25]), expect)
    # equal weights are the reference's plain TIES (peft), whatever their scale
    torch.testing.assert_close(ties_merge(base, [a, b], 0.5, [0.3, 0.3]), ties_merge(base, [a, b], 0.5))
    torch.testing.assert_close(ties_merge(base, [a, b], 0.5, [0.6, 0.2]),
                               ties_merge(base, [a, b], 0.5, [0.75, 0.25]))  # only their ratio matters


def test_routing_rule():
    m, ed, cases = build()
    x = torch.randn(3, 5, m.d_in)
    y0 = x @ ed.W.t()
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert ed.route(x, y0, mask).tolist() == [-1, -1, -1]  # no edit yet: min_a is inf, nothing fires
    ed.side = ed.W + 0.5
    ed.min_a = 0.0
    assert ed.route(x, y0, mask).tolist() == [0, 0, 0]  # W' fires above act_ratio x min_a
    ed.side, ed.min_a = ed.W.clone(), math.inf  # just reset: W' scores 0 and blocks nothing
    ed.memories = [{"weight": ed.W + 0.1, "min_a": 0.0, "merged": False},
                   {"weight": ed.W + 1.0, "min_a": 0.0, "merged": True}]
    assert ed.route(x, y0, mask).tolist() == [2, 2, 2]  # the most activated memory above its own bar
    ed.memories[1]["min_a"] = 1e9
    assert ed.route(x, y0, mask).tolist() == [1, 1, 1]
    ed.side = ed.W + 0.5
    ed.min_a = 0.0
    assert ed.route(x, y0, mask).tolist() == [0, 0, 0]  # a firing W' sets the bar the memories must beat
    y = ed.apply_route(x, y0, torch.tensor([-1, 0, 2]))
    torch.testing.assert_close(y[0], y0[0])
    torch.testing.assert_close(y[1], x[1] @ ed.side.t())
    torch.testing.assert_close(y[2], x[2] @ ed.memories[1]["weight"].t())


def test_memories_are_saved_and_merged_on_schedule():
    m, ed, cases = build(*SMALL)
    counts = []
    for c in cases[:6]:
        ed.edit([c.request])
        counts.append((len(ed.memories), sum(x["merged"] for x in ed.memories)))
    # saved at 2, saved at 4 then the two merged into one, saved again at 6
    assert counts == [(0, 0), (1, 0), (1, 0), (1, 1), (1, 1), (2, 1)]
    assert torch.equal(ed.side, ed.W) and ed.min_a == math.inf  # reset after the save at 6
    assert ed.num_params() == 3 * ed.W.numel()
    changed = (ed.memories[1]["weight"] != ed.W)
    assert changed.any()
    delta = ed.memories[1]["weight"] - ed.W
    assert delta.abs().max() <= 1.0 + 1e-6  # the element-wise clamp [W - c, W + c]


def test_resume_across_a_save_and_merge_boundary():
    ed, ed2, _ = resume_matches("wise", *SMALL, split=3, end=6)  # crosses the save + merge at 4 and the save at 6
    assert [x["min_a"] for x in ed2.memories] == [x["min_a"] for x in ed.memories]


def test_cached_and_uncached_decoding_agree_with_memories(zsre_records):
    m, ed, cases = build(*SMALL)
    for c in cases[:5]:
        ed.edit([c.request])
    ed.min_a = 0.0  # make the current side memory fire everywhere: routing decides per sequence
    prompts = [m.encode_prompt(c.request.prompt) for c in cases[:5]] + \
              [m.encode_prompt(r.probes["loc"].probes[0].prompt) for r in zsre_records[20:23]]
    ev = Evaluator(m, "greedy", batch_size=4)
    cached = ev.greedy(ed.module(), prompts, [6] * len(prompts))
    assert cached == ev.greedy(ed.module(), prompts, [6] * len(prompts), use_cache=False)
    pre = ev.reference(cases[:5])
    plain = ev.evaluate(ed.module(), cases[:5], pre, None, OP)
    fast = ev.evaluate(ed.module(), cases[:5], pre, m.site.layer, OP)
    assert fast == plain  # the decision is taken on the prompt: the teacher-forced shortcut stays exact


SITE_EDITORS = ("grace", "horen", "wise", "repair")
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
SITE_KEYS = {"layer", "layers", "edit_site", "module", "modules", "inner_params", "site"}


@pytest.mark.parametrize("model", MODELS)
def test_parameter_preserving_editors_edit_the_same_module_for_every_model(model):
    """GRACE, HoReN, WISE and REPAIR all wrap the module the model config names: for every model
    config, no editor (nor its editor x model file) names a site of its own, and every one of them
    uses the base class's `touches` (the model's site)."""
    for name in SITE_EDITORS:
        cfg = compose_config([f"editor={name}", f"model={model}"])
        assert not SITE_KEYS & set(cfg.editor), (name, model)
    for name in SITE_EDITORS:
        cls = hydra.utils.get_class(compose_config([f"editor={name}"]).editor._target_)
        assert cls.touches is Editor.touches, name


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2"])
def test_parameter_preserving_editors_wrap_that_module(model):
    for name in SITE_EDITORS:
        cfg = compose_config([f"editor={name}", f"model={model}"])
        m = load_model(cfg.model)
        original = m.site_module()
        ed = instantiate_group(cfg.editor, model=m)
        assert ed.touches() == [m.site]
        assert m.site_module() is not original and m.site_module().base is original, name


@pytest.mark.parametrize("override,expect", [
    ({"mask_ratio": 0.0}, "editor.mask_ratio=0.0"),
    ({"mask_ratio": 1.5}, "editor.mask_ratio=1.5"),
    ({"merge_freq": 750}, "editor.merge_freq=750 is not a multiple of editor.save_freq=500"),
    ({"act_margin": [5.0, -1.0, 10.0]}, "editor.act_margin=[5.0, -1.0, 10.0] is invalid (input should be greater"),
    ({"act_margin": [5.0, 20.0]}, "editor.act_margin"),
    ({"density": 0.0}, "editor.density=0.0"),
])
def test_impossible_settings_are_one_line(override, expect):
    from omegaconf import OmegaConf

    entry = {**OmegaConf.to_container(compose_config(["editor=wise"]).editor, resolve=True), **override}
    with pytest.raises(EditbenchError) as e:
        check_target("editor", entry, given=("model",))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_wise_needs_unrelated_prompts():
    cfg = compose_config(["editor=wise"])
    m = load_model(cfg.model)
    ed = instantiate_group(cfg.editor, model=m)
    with pytest.raises(EditbenchError, match="unrelated prompts"):
        ed.setup(SetupContext(cache_dir=CACHE_DIR, seed=0, aux=()))
    assert isinstance(ed, WISE)


def test_training_from_cached_site_inputs_equals_running_the_site_block():
    """Training adds x (W' - W)^T to the cached state after the site block instead of rerunning the
    block with W' in it: the same hidden states (the site block's residual stream adds its output)."""
    m, ed, cases = build()
    batch = ed._rows(cases[0].request)
    x, y0 = m.site_io(batch)
    side = ed.W + 0.05 * torch.randn_like(ed.W)
    above = m.site.layer + 1
    shortcut = m.prefix(batch, layer=above).h + (x @ side.t() - y0)
    base = m.site_module().base
    saved = base.weight.detach().clone()
    with torch.no_grad():
        base.weight.copy_(side)
        direct = m.prefix(batch, layer=above).h
        base.weight.copy_(saved)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(shortcut[real], direct[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2"])
def test_last_block_mlp_on_the_read_positions_only_is_exact(model):
    """WISE's training reads the final hidden states at the answer positions only, so the last
    block's MLP runs there alone (`suffix_hidden(needed=...)`): those positions are unchanged."""
    m, ed, cases = build(model=model)
    batch = ed._rows(cases[0].request)
    rows = len(ed.templates)
    from editbench.models import TokenBatch
    edit_rows = TokenBatch(*(t[:rows] for t in (batch.input_ids, batch.attention_mask, batch.prompt_mask, batch.labels)))
    pre = m.prefix(edit_rows, layer=m.site.layer + 1)
    nxt = edit_rows.predicts_label
    p = Pass("train", edit_rows.prompt_mask)
    full = m.suffix_hidden(pre, p)
    fast = m.suffix_hidden(pre, p, needed=nxt)
    torch.testing.assert_close(fast[nxt], full[nxt], rtol=1e-6, atol=1e-6)
    assert not torch.equal(fast, full)  # the other positions were skipped
    assert type(m.model.model.layers[-1].mlp).__name__ != "_OnlyAt"  # restored


def test_routing_diagnostic_reads_the_router_of_a_result_checkpoint(tmp_path):
    """scripts/side_memory_routing.py on a finished tiny WISE run: one decision per scored probe,
    taken by the editor's own router — every probe fires when the bar is ~0, none when it is
    enormous, and the score / bar ratios say the same; a codebook run is refused in one line."""
    import gzip
    import json

    from omegaconf import OmegaConf

    from editbench.run import run

    script = load_script("side_memory_routing")
    overrides = ["editor=wise", "n_edits=3", "editor.n_iter=4", "protocol.checkpoints=[]"]
    d = tmp_path / "run"
    run(compose_config(overrides, out_dir=tmp_path), d, overrides=overrides)
    with gzip.open(d / "records" / "step_000003.jsonl.gz", "rt") as f:
        counts = {}
        for line in f:
            s = json.loads(line)["set"]
            counts[s] = counts.get(s, 0) + 1
    rep = script.main([str(d)])
    assert rep["step"] == 3 and rep["editor"] == "wise"
    assert {k: v["n"] for k, v in rep["sets"].items()} == counts
    for v in rep["sets"].values():
        assert v["score_routed"]["n"] + v["score_unrouted"]["n"] == v["n"] == sum(v["memories"].values())
    # --unrelated K: the last K unrelated rows the editor drew (3 edits drew 3) and the next K undrawn,
    # routing only (they have no records)
    rep = script.main([str(d), "--unrelated", "5"])
    assert {k: v["n"] for k, v in rep["sets"].items()} == {**counts, "aux_seen": 3, "aux_unseen": 5}
    for name in ("aux_seen", "aux_unseen"):
        v = rep["sets"][name]
        assert v["score_routed"]["n"] == v["score_unrouted"]["n"] == 0 and sum(v["memories"].values()) == v["n"]
    with pytest.raises(SystemExit, match="pass a smaller K"):
        script.main([str(d), "--unrelated", "1000000"])
    cfg_path = d / ".hydra" / "config.yaml"
    for ratio, all_fire in ((1e-12, True), (1e12, False)):
        cfg = OmegaConf.load(cfg_path)
        cfg.editor.act_ratio = ratio
        OmegaConf.save(cfg, cfg_path)
        rep = script.main([str(d), "--unrelated", "2"])
        assert {"aux_seen", "aux_unseen"} <= set(rep["sets"])
        for v in rep["sets"].values():
            assert v["routed"] == (v["n"] if all_fire else 0)
            assert (v["best_over_bar"]["q10"] >= 1) if all_fire else (v["best_over_bar"]["q90"] < 1)
    cfg = OmegaConf.load(cfg_path)
    cfg.editor = compose_config(["editor=grace"]).editor
    OmegaConf.save(cfg, cfg_path)
    with pytest.raises(SystemExit, match="has no side memory"):
        script.main([str(d)])
