"""Every editor in conf/editor/ honours the protocol in editors/base.py (STYLE G1, G4, G6, G8).

Parametrised over the YAML files, so a new editor is picked up with no change here. Each editor is
built exactly as the runner builds it (`build.build`) on `model=tiny_llama` and on `model=tiny_gemma3`
(Gemma-3's block: sliding-window and global attention layers, the scaled embedding), edits real ZsRE
records one at a time, and must:
* leave no parameter of the model trainable;
* round-trip `state_dict()` (through torch.save / torch.load, as checkpoints do) into a fresh model
  and a fresh editor with identical logits, and continue editing from it exactly as an
  uninterrupted editor does (resume equivalence);
* report `num_params()` as an int >= 0 and a non-empty `method`;
* touch the model only at the edit site the *model* config names (G4): move the site with
  `model.edit_site.layer=...` and the editor follows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CONF, build_editor, compose_config, prefill_logits, roundtrip  # noqa: E402

from conftest import probe  # noqa: E402
from editbench.evaluate import Evaluator  # noqa: E402
from editbench.models import load_model  # noqa: E402
from editbench.metrics import OP  # noqa: E402

EDITORS = sorted(p.stem for p in (CONF / "editor").glob("*.yaml"))
SITE_KEYS = {"layer", "layers", "edit_site", "module", "modules", "edit_modules", "inner_params", "site"}
MODELS = ["tiny_llama", "tiny_gemma3"]  # a LLaMA block, and Gemma-3's (sliding-window + global layers)
# On tiny_gemma3 one editor per mechanism runs in every test run (codebook, side memory, located
# weight edit); the others are `slow` there (`make test` runs them, `make test-fast` does not), so
# the second model costs this file about a quarter more time instead of double.
FAST_ON_GEMMA = {"horen", "wise", "rome"}


def cases(*pairs) -> list:
    """pytest params (editor, *pair) for every editor and pair; tiny_gemma3 outside FAST_ON_GEMMA is slow."""
    def marks(name, arch):
        return [pytest.mark.slow] if arch == "tiny_gemma3" and name not in FAST_ON_GEMMA else []

    return [pytest.param(name, *pair, marks=marks(name, pair[0])) for name in EDITORS for pair in pairs]


def build(name: str, *overrides: str, seed: int = 0, model: str = "tiny_llama"):
    """(model, editor) the way run.py builds them (conftest.build_editor, 16 stream cases' aux)."""
    model, editor, _ = build_editor(name, *overrides, model=model, n_cases=16, seed=seed)
    return model, editor


logits = prefill_logits


def same(a, b) -> bool:
    """Deep, bitwise equality of two state dicts (tensors, containers, plain values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b  # NaN (e.g. a codebook's unlabelled row)
    return a == b


def trainable(model) -> list[str]:
    return [n for n, p in model.model.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def records(zsre_records):
    return zsre_records[:3]


@pytest.fixture(scope="module")
def probe_prompts(records, zsre_records):
    # the edited prompts, their paraphrases, and unrelated prompts (locality)
    return ([r.request.prompt for r in records] + [probe(r, "gen").prompt for r in records]
            + [probe(r, "loc").prompt for r in zsre_records[10:13]])


@pytest.mark.parametrize("name,arch", cases(*[(m,) for m in MODELS]))
def test_editor_conformance(name, arch, records, probe_prompts):
    model, editor = build(name, model=arch)
    assert isinstance(editor.method, str) and editor.method.strip() and editor.method != "?"
    base_logits = logits(model, editor, probe_prompts)
    pre = {s: Evaluator(model, s).reference(records) for s in ("greedy", "teacher_forced")}  # unedited
    assert trainable(model) == []

    for r in records[:2]:
        editor.edit([r.request])
        assert trainable(model) == [], f"{name}.edit left parameters trainable: {trainable(model)}"
    mid_logits, mid_state = logits(model, editor, probe_prompts), roundtrip(editor.state_dict())
    torch.manual_seed(1234)
    editor.edit([records[2].request])
    assert trainable(model) == []
    end_logits, end_state = logits(model, editor, probe_prompts), roundtrip(editor.state_dict())

    n = editor.num_params()
    assert isinstance(n, int) and not isinstance(n, bool) and n >= 0
    if n > 0:  # an editor that added or changed parameters changed what the model computes
        assert not torch.equal(end_logits, base_logits), f"{name}: 3 edits left every logit unchanged"

    # a fresh model + fresh editor (other seed, so constructor randomness differs) restores exactly
    model2, editor2 = build(name, seed=99, model=arch)
    editor2.load_state_dict(end_state)
    torch.testing.assert_close(logits(model2, editor2, probe_prompts), end_logits, rtol=0, atol=0)
    assert editor2.num_params() == n and editor2.method == editor.method
    assert trainable(model2) == []

    # resume equivalence: restore after 2 edits, apply the 3rd -> the same as never stopping
    model3, editor3 = build(name, seed=7, model=arch)
    loaded = roundtrip(mid_state)
    editor3.load_state_dict(loaded)
    torch.testing.assert_close(logits(model3, editor3, probe_prompts), mid_logits, rtol=0, atol=0)
    torch.manual_seed(1234)
    editor3.edit([records[2].request])
    torch.testing.assert_close(logits(model3, editor3, probe_prompts), end_logits, rtol=0, atol=0)
    # the editor owns copies of what it loaded: editing never writes into the state it was given
    assert same(loaded, mid_state), f"{name}: edit() after load_state_dict changed the loaded state dict"

    # the evaluator runs on the editor's module: KV-cached greedy decoding (plain, and the exact
    # shortcut when the editor declares the blocks below the site frozen) and teacher forcing
    plain = Evaluator(model3, "greedy", batch_size=2).evaluate(editor3.module(), records, pre["greedy"], None, OP)
    assert plain.metrics["n_eval"] == len(records) and plain.names == ["rel", "gen", "loc", "op"]
    assert all(0.0 <= plain.metrics[k] <= 1.0 for k in plain.names)
    reuse = min((s.layer for s in editor3.touches()), default=model3.site.layer)
    fast = Evaluator(model3, "greedy", batch_size=2).evaluate(editor3.module(), records, pre["greedy"], reuse, OP)
    assert fast == plain, f"{name}: the evaluator's shortcut from layer {reuse} disagrees with plain decoding"
    tf = Evaluator(model3, "teacher_forced", batch_size=2).evaluate(editor3.module(), records, pre["teacher_forced"],
                                                                   reuse, OP)
    assert all(0.0 <= tf.metrics[k] <= 1.0 for k in tf.names)

    # KV-cached and uncached greedy decoding give identical outputs (the edit goes in on the
    # prompt pass and survives the decode steps; without a cache every step is a prompt pass)
    ev = Evaluator(model3, "greedy", batch_size=3)
    prompts = [model3.encode_prompt(p) for p in probe_prompts]
    n_new = [5] * len(prompts)
    assert ev.greedy(editor3.module(), prompts, n_new) == ev.greedy(editor3.module(), prompts, n_new, use_cache=False)


# ----------------------------------------------------------------------------- G4: the edit site
@pytest.mark.parametrize("name", EDITORS)
def test_editor_yaml_declares_no_edit_site_of_its_own(name):
    """Aligned editors take the model config's edit site; located editors (ROME family) leave
    their layers null in the editor YAML and take them from editor × model pair files."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "editor" / f"{name}.yaml"), resolve=False)
    for key in SITE_KEYS & set(raw):
        if raw[key] is None:
            for model in ("smollm2_135m", "gemma3_270m", "tiny_llama", "tiny_qwen2", "tiny_gemma3", "llama3_8b",
                          "llama31_8b", "qwen25_7b"):
                pair = CONF / "editor_model" / f"{name}_{model}.yaml"
                assert pair.is_file() and key in OmegaConf.load(pair), f"{pair.name} must set {key}"
            continue
        assert isinstance(raw[key], str) and raw[key].startswith("${model.edit_site"), \
            f"conf/editor/{name}.yaml sets {key}={raw[key]!r}: the edit site belongs to the model config"


def _differences(pristine, edited) -> set[str]:
    """Dotted paths where the edited model differs from the pristine one: parameters / buffers
    (added, removed or changed), module types, and forward hooks."""
    diff: set[str] = set()
    a, b = pristine.state_dict(), edited.state_dict()
    for k in a.keys() | b.keys():
        if k not in a or k not in b or not torch.equal(a[k], b[k]):
            diff.add(k)
    ma, mb = dict(pristine.named_modules()), dict(edited.named_modules())
    for k in ma.keys() | mb.keys():
        if k not in ma or k not in mb or type(ma[k]) is not type(mb[k]):
            diff.add(k)
        elif len(mb[k]._forward_hooks) + len(mb[k]._forward_pre_hooks) != \
                len(ma[k]._forward_hooks) + len(ma[k]._forward_pre_hooks):
            diff.add(k + ".<hooks>")
    return diff


@pytest.mark.parametrize("name,arch,layer", cases(("tiny_llama", None), ("tiny_llama", 1), ("tiny_gemma3", None)))
def test_editor_changes_only_what_it_declares(name, arch, layer, records):
    """An editor changes the model only at the sites `touches()` declares (what the evaluator's
    reuse of unedited states relies on); aligned editors declare the model config's edit site,
    and moving it with model.edit_site.layer moves them (G4)."""
    over = [] if layer is None else [f"model.edit_site.layer={layer}"]
    model, editor = build(name, *over, model=arch)
    assert model.site.layer == (2 if layer is None else layer)
    declared = [f"model.layers.{s.layer}.{s.module}" for s in editor.touches()]
    if editor.aligned:
        assert all(s == model.site for s in editor.touches()), f"{name} declares sites off the model's edit site"
    else:  # located editors: their own layers (editor_model pair file), whatever the model's edit site
        assert editor.touches() == build(name, model=arch)[1].touches()
    pristine = load_model(compose_config([f"model={arch}", *over]).model).model
    editor.edit([records[0].request])
    outside = sorted(d for d in _differences(pristine, model.model)
                     if not any(d == site or d.startswith(site + ".") for site in declared))
    assert outside == [], f"{name} changed the model outside its declared sites {declared}: {outside[:8]}"
