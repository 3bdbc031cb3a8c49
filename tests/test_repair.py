"""REPAIR on the tiny models: loss-weighted TIES against a hand-computed case, in-group
distillation (teacher from the group's first edit, KL at the aligned answer positions), the
closed loop (which memory is re-initialised, which edits are re-queued, the round limit), and
resume across a group boundary with the loop and a merge in it."""
from __future__ import annotations

import functools
import io
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from conftest import build_editor, prefill_logits  # noqa: E402

from editbench.editors._side_memory import ties_merge  # noqa: E402

# groups of 2, merged per 4; error_threshold 1.0 so the loop acts whenever an edit fails
SMALL = ["editor.save_freq=2", "editor.merge_freq=4", "editor.n_iter=6", "editor.error_threshold=1.0",
         "editor.max_iterations=2"]


build = functools.partial(build_editor, "repair")
logits = prefill_logits


def test_weighted_ties_by_hand():
    base = torch.zeros(2, 3)
    a = torch.tensor([[3.0, -1.0, 0.5], [2.0, 0.0, -4.0]])
    b = torch.tensor([[1.0, 2.0, -0.2], [-3.0, 0.1, -0.9]])
    # density 0.5 keeps the 3 largest |entries|: a -> [[3,0,0],[2,0,-4]], b -> [[1,2,0],[-3,0,0]]
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


def test_merge_weights_follow_the_shard_losses():
    m, ed, cases = build(*SMALL)
    w = ed.merge_coefficients([{"loss": 0.1}, {"loss": 1.1}, {"loss": math.inf}])
    expect = torch.softmax(torch.tensor([-0.1, -1.1]), 0).tolist()
    assert w[0] == pytest.approx(expect[0]) and w[1] == pytest.approx(expect[1]) and w[2] == 0.0
    assert ed.merge_coefficients([{"loss": math.inf}]) is None


def test_distillation_teacher_is_the_groups_first_edit():
    m, ed, cases = build(*SMALL)
    assert ed.extra_loss(torch.zeros(3, 5), [1, 1, 1]) is None  # no teacher before a group's first edit
    ed.edit([cases[0].request])
    t_logits, t_counts = ed.teacher
    assert len(t_counts) == len(ed.templates) and t_logits.shape[0] == sum(t_counts)
    # the teacher against itself: no divergence; against other logits: T^2 * lambda * mean KL
    assert ed.extra_loss(t_logits, t_counts).item() == pytest.approx(0.0, abs=1e-6)
    other = t_logits.roll(1, dims=-1)
    T, lam = ed.hparams["kd_temperature"], ed.hparams["kd_weight"]
    kl = F.kl_div(F.log_softmax(other / T, -1), F.softmax(t_logits / T, -1), reduction="none").sum(-1).mean()
    assert ed.extra_loss(other, t_counts).item() == pytest.approx((lam * T * T * kl).item(), rel=1e-5)
    # a student row with fewer answer tokens is compared on the positions both have
    short = [c - 1 if i == 0 else c for i, c in enumerate(t_counts)]
    keep = [j for j in range(sum(t_counts)) if j != t_counts[0] - 1]
    kl = F.kl_div(F.log_softmax(other[keep] / T, -1), F.softmax(t_logits[keep] / T, -1), reduction="none")
    assert ed.extra_loss(other[keep], short).item() == pytest.approx((lam * T * T * kl.sum(-1).mean()).item(), rel=1e-5)
    ed.edit([cases[1].request])
    assert ed.teacher[0] is t_logits  # the group's first edit stays the teacher
    ed.edit([cases[2].request])  # a new group: a new teacher
    assert ed.teacher[0] is not t_logits and ed.group == [cases[2].request]


def test_closed_loop_reinitialises_the_memory_that_captured_the_group(monkeypatch):
    m, ed, cases = build(*SMALL)
    for c in cases[:2]:
        ed.edit([c.request])  # group 1 saved as memory 0 (routing index 1)
    ed.edit([cases[2].request])
    checks, trained = [], []
    verdicts = iter([([False, True], [1, 0]), ([False, True], [0, 0]), ([True, True], [0, 0])])
    monkeypatch.setattr(ed, "check", lambda reqs: checks.append(list(reqs)) or next(verdicts))
    real_train = ed.train_edit
    monkeypatch.setattr(ed, "train_edit", lambda r: trained.append(r) or real_train(r))
    before = dict(ed.feedback)
    ed.edit([cases[3].request])
    group = [cases[2].request, cases[3].request]
    assert checks == [group, group, group]  # rounds until the group is reproduced
    # round 1: the failed edit was routed to memory 0 -> re-initialised; it is re-queued
    assert trained == [cases[3].request, cases[2].request, cases[2].request]
    grew = {k: ed.feedback[k] - before[k] for k in ("groups", "rounds", "retrained", "reinitialised")}
    assert grew == {"groups": 1, "rounds": 2, "retrained": 2, "reinitialised": 1}
    assert ed.feedback["last_accuracy"] == 1.0
    # memory 0 then merged with group 2's shard: the re-initialised one adds nothing (weight 0)
    assert len(ed.memories) == 1 and ed.memories[0]["merged"]
    assert math.isfinite(ed.memories[0]["min_a"])


def test_closed_loop_stops_after_max_iterations(monkeypatch):
    m, ed, cases = build(*SMALL)
    monkeypatch.setattr(ed, "check", lambda reqs: ([False] * len(reqs), [0] * len(reqs)))
    for c in cases[:2]:
        ed.edit([c.request])
    assert ed.feedback["rounds"] == 2 and ed.feedback["retrained"] == 4 and ed.feedback["reinitialised"] == 0


def test_check_is_exact_greedy_reproduction():
    m, ed, cases = build(*SMALL)
    ok, routes = ed.check([c.request for c in cases[:3]])
    assert routes == [-1, -1, -1]  # nothing edited: nothing fires
    for c, good in zip(cases[:3], ok):
        ids, k = m.encode_example(c.request.prompt, c.request.target)
        out = m.greedy(ed.module(), [ids[:k]], [len(ids) - k])[0]
        assert good == (out == ids[k:])


def test_resume_across_a_group_boundary_with_the_loop_and_a_merge():
    m, ed, cases = build(*SMALL)
    for c in cases[:3]:
        ed.edit([c.request])
    buf = io.BytesIO()
    torch.save(ed.state_dict(), buf)
    for c in cases[3:6]:  # group end + loop + merge at 4, group end + loop at 6
        ed.edit([c.request])
    prompts = [c.request.prompt for c in cases[:6]]
    want = logits(m, ed, prompts)

    m2, ed2, _ = build(*SMALL)
    buf.seek(0)
    ed2.load_state_dict(torch.load(buf, weights_only=False))
    for c in cases[3:6]:
        ed2.edit([c.request])
    torch.testing.assert_close(logits(m2, ed2, prompts), want, rtol=0, atol=0)
    assert ed2.feedback == ed.feedback and ed.feedback["groups"] == 3
