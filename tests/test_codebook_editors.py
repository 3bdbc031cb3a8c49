"""HoReN's Hopfield step and both codebook editors' insertion rules (docs/editors.md#horen, #grace)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from editbench.data import EditRequest
from editbench.editors._common import prompt_positions
from editbench.models import Pass
from conftest import build_editor  # noqa: E402  (pytest puts tests/ on sys.path; one conftest module)


def build(name: str, *overrides: str, seed: int = 0, model: str = "tiny_llama"):
    model, editor, _ = build_editor(name, *overrides, model=model, n_cases=1, seed=seed)
    return model, editor


def rec(prompt: str, target: str, i: int = 0) -> EditRequest:
    return EditRequest(id=str(i), prompt=prompt, target=target)


def with_keys(editor, keys: torch.Tensor):
    """Replace the codebook by unit `keys` (plus HoReN's dummy entry 0)."""
    book = editor.book
    book.n = 1
    book.labels, book.ref_labels = book.labels[:1], book.ref_labels[:1]
    for i, k in enumerate(keys):
        book.add(F.normalize(k, dim=0), torch.zeros(book.values.shape[1]), label=(i,), ref_label=float(i))
    return editor


@pytest.fixture(scope="module")
def horen():
    return build("horen", "editor.threshold=0.5", "editor.pooling_ratio=0.6")


def keys_in(d: int, n: int) -> torch.Tensor:
    return torch.eye(d)[:n]  # orthonormal keys e_0 .. e_{n-1}


def test_one_hopfield_step_pulls_a_near_query_toward_its_key(horen):
    _, ed = horen
    d = ed.book.keys.shape[1]
    with_keys(ed, keys_in(d, 8))
    torch.manual_seed(1)
    q = F.normalize(torch.eye(d)[3] + 0.6 * F.normalize(torch.randn(d), dim=0), dim=0)[None]
    before = float(q[0, 3])
    after = float(ed.refine(q)[0, 3])
    assert after > before + 0.02  # moved toward key 3
    assert torch.isclose(ed.refine(q).norm(), torch.tensor(1.0))


def test_one_hopfield_step_pushes_a_paraphrase_over_tau_but_leaves_a_far_query_unmatched(horen):
    """Near a key, attention concentrates and the damped step raises the cosine past tau (the
    paraphrase falls into the key's basin); far from all keys attention is diffuse, the step only
    drifts toward the keys' centroid, and the query still matches nothing."""
    _, ed = horen
    d = ed.book.keys.shape[1]
    with_keys(ed, keys_in(d, 8))
    stored = ed.book.K[1:].float()
    c0 = 0.88
    near = (c0 * torch.eye(d)[3] + (1 - c0**2) ** 0.5 * torch.eye(d)[d - 2])[None]
    assert float((near @ stored.T).max()) < 0.9 < float((ed.refine(near) @ stored.T).max())
    far = torch.eye(d)[d - 1][None]  # orthogonal to every stored key
    refined = ed.refine(far)
    assert float((refined @ stored.T).max()) < 0.1
    assert float((refined - far).norm()) <= 2 * ed.alpha  # the damping bounds every step


def test_many_hopfield_steps_pull_every_query_into_the_hull_of_the_keys(horen):
    """Theorem 2.1: iterated to convergence, the update drags any query to a fixed point
    q = normalize(K^T softmax(beta K q)) in the cone of the stored keys, so it ends up matching a
    key — which is why M = 1 (and locality collapses with many steps)."""
    _, ed = horen
    d = ed.book.keys.shape[1]
    torch.manual_seed(2)
    keys = F.normalize(torch.randn(6, d), dim=1)
    with_keys(ed, keys)
    steps = ed.steps
    try:
        ed.steps = 2000
        queries = F.normalize(torch.randn(5, d), dim=1)
        before = (queries @ ed.book.K.float().T).max(1).values
        q = ed.refine(queries)
    finally:
        ed.steps = steps
    K = ed.book.K.float()
    fixed = F.normalize(torch.softmax(ed.beta * q @ K.T, -1) @ K, dim=-1)
    assert torch.allclose(q, fixed, atol=1e-3)  # a fixed point, i.e. a normalised convex combination of keys
    after = (q @ K.T).max(1).values
    assert bool((after > 0.9).all()) and bool((after > before + 0.5).all())


def test_pooling_window_is_the_last_ceil_rho_p_prompt_tokens():
    mask = torch.tensor([[False, False, True, True, True, True, True],   # P = 5 (left padded)
                         [True, True, True, True, True, True, True]])     # P = 7
    last, window = prompt_positions(mask, 0.6)
    assert last.tolist() == [6, 6]
    assert window[0].nonzero().flatten().tolist() == [4, 5, 6]        # ceil(0.6 * 5) = 3
    assert window[1].nonzero().flatten().tolist() == [2, 3, 4, 5, 6]  # ceil(0.6 * 7) = 5


def test_horen_codebook_cases():
    model, ed = build("horen", "editor.threshold=0.9", "editor.n_iter=3")
    a = rec("What is the capital of France?", "Paris")
    ed.edit([a])
    assert ed.book.n == 2 and ed.cases["insert_no_match"] == 1  # (i) no match -> insert
    key = ed.book.K[1].clone()
    ed.edit([a])  # the same prompt and target: its own key matches with cosine 1
    assert ed.book.n == 2 and ed.cases["train_same_label"] == 1  # (ii) same label -> train that entry
    ed.edit([rec(a.prompt, "Lyon")])
    assert ed.book.n == 3 and ed.cases["insert_conflict"] == 1  # (iii) other label -> insert
    assert torch.equal(ed.book.K[1], key)  # keys never change


def test_horen_stores_the_pre_refinement_query():
    model, ed = build("horen", "editor.threshold=0.9", "editor.n_iter=1")
    ed.edit([rec("Who wrote Hamlet?", "Shakespeare")])
    ed.edit([rec("Who painted the Mona Lisa?", "Leonardo")])
    r = rec("Which river flows through Cairo?", "Nile")
    batch = model.batch([model.encode_example(r.prompt, r.target)])
    x, _ = model.site_io(batch)
    q0 = ed.query(x, batch.prompt_mask)
    assert not torch.allclose(ed.refine(q0), q0)  # the Hopfield step moves it ...
    ed.edit([r])
    assert torch.allclose(ed.book.K[-1].float(), q0[0], atol=1e-6)  # ... but the key is q0


def test_horen_reference_label_rule_treats_another_prompt_length_as_a_conflict():
    """The reference compares mean(label tensor incl. the -100 prompt mask): the same target
    after a prompt of another length counts as a different label."""
    _, exact = build("horen", "editor.threshold=-1", "editor.n_iter=1", "editor.same_label=exact")
    _, ref = build("horen", "editor.threshold=-1", "editor.n_iter=1", "editor.same_label=reference")
    for ed in (exact, ref):  # threshold -1: everything matches the nearest entry
        ed.edit([rec("Who wrote Hamlet?", "Shakespeare")])
        ed.edit([rec("Who is the author of the play Hamlet?", "Shakespeare")])
    # the first edit "matches" the dummy entry (tau = -1) whose label never equals: a conflict insert
    assert exact.cases == {"insert_no_match": 0, "train_same_label": 1, "insert_conflict": 1}
    assert ref.cases == {"insert_no_match": 0, "train_same_label": 0, "insert_conflict": 2}


def test_horen_unnormalised_scores_are_raw_dot_products():
    _, ed = build("horen", "editor.normalize=false", "editor.hopfield_steps=0")
    assert ed.method == "GRACE (pooled, dot)"
    x = torch.randn(1, 5, ed.book.keys.shape[1]) * 3
    q = ed.query(x, torch.ones(1, 5, dtype=torch.bool))
    assert q.norm() > 1.5  # not normalised


def test_method_labels_follow_the_ablation_switches():
    assert build("horen")[1].method == "HoReN"
    assert build("horen", "editor.hopfield_steps=0")[1].method == "GRACE+Norm"
    assert build("horen", "editor.normalize=false")[1].method == "HoReN w/o norm"
    assert build("horen", "editor.value_adaptor=lora")[1].method == "HoReN-LoRA"
    assert build("grace")[1].method == "GRACE"


def test_grace_add_reuse_split_expand():
    model, ed = build("grace", "editor.eps_init=1000", "editor.n_iter=1")
    a = rec("What is the capital of France?", "Paris")
    ed.edit([a])
    assert (ed.book.n, ed.cases["add"]) == (1, 1)
    ed.edit([a])  # distance 0 <= radius, same label
    assert (ed.book.n, ed.cases["reuse"]) == (1, 1)
    b = rec("Which city is the capital of Italy?", "Rome")
    batch = model.batch([model.encode_example(b.prompt, b.target)])
    x, _ = model.site_io(batch)
    last, _ = prompt_positions(batch.prompt_mask)
    d = float(torch.cdist(x[0, last[0]][None].float(), ed.book.K.float())[0, 0])
    assert d < 1000
    ed.edit([b])  # within eps0 + eps_j, another label: split
    assert ed.book.n == 2 and ed.cases["split"] == 1
    assert float(ed.book.R[0]) == pytest.approx(d / 2 - 1e-5, rel=1e-4)
    assert float(ed.book.R[1]) == pytest.approx(d / 2, rel=1e-4)
    c = rec("Which city is the capital of Italy?", "Paris")  # B's key, A's label
    ed.book.labels[1] = ed.book.labels[0]  # make B's entry carry A's label so C (same key) re-uses it
    ed.book.radii[1] = 0.0
    ed.edit([c])  # the same key at distance 0 > radius 0? no: 0 <= 0 -> reuse
    assert ed.cases["reuse"] == 2


def test_grace_far_edit_adds_and_replaces_only_inside_the_radius():
    model, ed = build("grace", "editor.eps_init=1e-6", "editor.n_iter=1")
    ed.edit([rec("What is the capital of France?", "Paris")])
    ed.edit([rec("Which city is the capital of Italy?", "Rome")])
    assert ed.book.n == 2 and ed.cases["add"] == 2
    # an unrelated prompt is outside every (tiny) ball: the layer output is untouched
    prompt = "nq question: who wrote the odyssey"
    ids = model.encode_prompt(prompt)
    batch = model.batch([(ids, len(ids))])
    with torch.no_grad(), model.bind(Pass("prefill", batch.prompt_mask)):
        edited = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    with torch.no_grad(), model.bind(Pass("unedited", batch.prompt_mask)):
        plain = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(edited, plain)


@pytest.mark.parametrize("name", ["grace", "horen"])
def test_a_forward_pass_without_a_pass_context_raises(name):
    """The edit is never skipped silently: a wrapper reached outside `model.bind` raises."""
    model, ed = build(name, "editor.n_iter=1")
    ed.edit([rec("What is the capital of France?", "Paris")])
    ids = model.encode_prompt("What is the capital of France?")
    with pytest.raises(RuntimeError, match="no pass context"):
        model.model(input_ids=torch.tensor([ids]))


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2"])
def test_the_run_seed_reaches_editor_initialisation(model):
    """The run seed decides the editor's random initialisation (HoReN's dummy key) through the
    generator of `SetupContext`, not the global RNG; the model's weights stay those of init_seed."""
    def init(seed):
        return build("horen", model=model, seed=seed)

    (m0, a), (m1, b), (m2, c) = init(0), init(99), init(0)
    assert not torch.equal(a.book.K[0], b.book.K[0])
    assert torch.equal(a.book.K[0], c.book.K[0])
    for p, q in zip(m0.model.parameters(), m1.model.parameters()):
        assert torch.equal(p, q)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a.edit([rec("What is the capital of France?", "Paris")])
    assert torch.equal(before, torch.get_rng_state())  # editing draws nothing from the global RNG


def test_horen_draws_what_the_reference_draws_after_seeding_the_global_rng():
    """With run seed s the dummy key is randn(d_in) and the first cold value the next rand(d_out)
    of a generator seeded with s: the numbers the reference draws from the global RNG after
    torch.manual_seed(s). A record-by-record comparison with it therefore needs the same seed on
    both sides (docs/conformance.md#horen); this pins the order of the draws."""
    model, ed = build("horen", seed=42)
    drawn, draw = [], ed.draw
    ed.draw = lambda *a: drawn.append(draw(*a)) or drawn[-1]
    ed.edit([rec("What is the capital of France?", "Paris")])
    torch.manual_seed(42)
    dummy, cold = torch.randn(model.d_in), torch.rand(model.d_out)
    assert torch.equal(ed.book.keys[0], (dummy / dummy.norm()).to(ed.book.keys.dtype))
    assert len(drawn) == 1 and torch.equal(drawn[0], cold)  # the new entry's initial value


@pytest.mark.parametrize("layer,module", [(0, "mlp.down_proj"), (1, "self_attn.o_proj"), (3, "mlp.up_proj")])
def test_any_site_can_be_addressed_and_split_at(tiny_model, layer, module):
    """The adapter addresses any (layer, module) site, and the network splits exactly at any
    layer: the frozen prefix below it plus the suffix from it equals one full forward pass."""
    from editbench.models import EditSite

    m = tiny_model
    site = EditSite(layer, module)
    assert m.module_at(site) is m.model.model.layers[layer].get_submodule(module)
    ids = m.encode_prompt("Which river flows through Cairo?")
    batch = m.batch([(ids, len(ids))])
    x, y = m.site_io(batch, site)
    assert x.shape[:2] == y.shape[:2] == batch.input_ids.shape
    with torch.no_grad():
        pre = m.prefix(batch, layer=layer)
        split = m.suffix_hidden(pre, Pass("prefill", batch.prompt_mask))
        with m.bind(Pass("prefill", batch.prompt_mask)):
            full = m.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 position_ids=batch.position_ids).last_hidden_state
    torch.testing.assert_close(split, full, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="no module 'mlp.nope'"):
        m.module_at(EditSite(layer, "mlp.nope"))
