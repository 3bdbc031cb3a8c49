"""REPAIR on the tiny models: the merge weights from the shard losses (the loss-weighted TIES
itself is tested beside plain TIES, in test_wise.py), in-group distillation (teacher from the
group's first edit, KL at the aligned answer positions), the closed loop (which memory is
re-initialised, which edits are re-queued, the round limit), and resume across a group boundary
with the loop and a merge in it."""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from conftest import build_editor, resume_matches  # noqa: E402

# groups of 2, merged per 4; error_threshold 1.0 so the loop acts whenever an edit fails
SMALL = ["editor.save_freq=2", "editor.merge_freq=4", "editor.n_iter=6", "editor.error_threshold=1.0",
         "editor.max_iterations=2"]


build = functools.partial(build_editor, "repair")


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
    carried = list(ed.pending)  # the group's failures (the tiny model reproduces few targets)
    ed.edit([cases[2].request])  # a new group: a new teacher (its first trained edit)
    assert ed.teacher[0] is not t_logits and ed.group == [*carried, (cases[2].request, 0)]


def test_closed_loop_reinitialises_the_memory_that_captured_the_group(monkeypatch):
    m, ed, cases = build(*SMALL)
    checks, trained = [], []
    verdicts = iter([([True, True], [0, 0]), ([False, True], [1, 0]), ([True, False, True], [0, 0, 0]),
                     ([True] * 3, [0] * 3)])
    monkeypatch.setattr(ed, "check", lambda reqs: next(verdicts) if not checks.append(list(reqs)) else None)
    for c in cases[:2]:
        ed.edit([c.request])  # group 1 reproduced, saved as memory 0 (routing index 1)
    ed.edit([cases[2].request])
    checks.clear()
    real_train = ed.train_edit
    monkeypatch.setattr(ed, "train_edit", lambda r: trained.append(r) or real_train(r))
    before = dict(ed.feedback)
    ed.edit([cases[3].request])  # group 2 ends: its first edit failed, routed to memory 0
    assert checks == [[cases[2].request, cases[3].request]] and trained == [cases[3].request]
    assert ed.pending == [(cases[2].request, 1)]  # re-queued once, not yet trained again
    grew = {k: ed.feedback[k] - before[k] for k in ("groups", "failed_groups", "retrained", "reinitialised")}
    assert grew == {"groups": 1, "failed_groups": 1, "retrained": 0, "reinitialised": 1}
    assert ed.feedback["last_accuracy"] == 0.5
    # memory 0 (re-initialised) then merged with group 2's shard: it adds nothing (weight 0)
    assert len(ed.memories) == 1 and ed.memories[0]["merged"]
    assert math.isfinite(ed.memories[0]["min_a"])
    assert ed.report()["feedback"]["pending"] == 1

    ed.edit([cases[4].request])  # group 3 opens: the failed edit is trained first, and is its teacher
    assert trained == [cases[3].request, cases[2].request, cases[4].request]
    assert ed.group == [(cases[2].request, 1), (cases[4].request, 0)] and ed.pending == []
    assert ed.feedback["retrained"] - before["retrained"] == 1
    ed.edit([cases[5].request])  # group 3 ends: checked with the re-queued edit in it
    assert checks[1] == [cases[2].request, cases[4].request, cases[5].request]
    assert ed.pending == [(cases[4].request, 1)]
    ed.edit([cases[6].request])
    ed.edit([cases[7].request])
    assert checks[2] == [cases[4].request, cases[6].request, cases[7].request] and ed.pending == []
    assert ed.feedback["last_accuracy"] == 1.0


def test_requeued_edits_are_capped_per_group_and_per_edit(monkeypatch):
    m, ed, cases = build(*SMALL)  # max_iterations 2
    monkeypatch.setattr(ed, "check", lambda reqs: ([r.id == cases[0].request.id for r in reqs], [0] * len(reqs)))
    for c in cases[:8]:  # 4 groups of 2 new edits; only cases[0] is ever reproduced
        ed.edit([c.request])
    fb = ed.feedback
    # at most save_freq = 2 re-queued per group, each at most twice:
    # group 1 (0, 1) re-queues 1; group 2 (1, 2, 3) re-queues 1 (2nd time) and 2, drops 3 (full);
    # group 3 (1, 2, 4, 5) drops 1 (twice re-queued), re-queues 2 (2nd time) and 4, drops 5 (full);
    # group 4 (2, 4, 6, 7) drops 2, re-queues 4 (2nd time) and 6, drops 7
    assert fb["groups"] == 4 and fb["failed_groups"] == 4 and fb["dropped"] == 5
    assert fb["retrained"] == 1 + 2 + 2
    assert [(r.id, n) for r, n in ed.pending] == [(cases[4].request.id, 2), (cases[6].request.id, 1)]


def test_check_is_exact_greedy_reproduction():
    m, ed, cases = build(*SMALL)
    ok, routes = ed.check([c.request for c in cases[:3]])
    assert routes == [-1, -1, -1]  # nothing edited: nothing fires
    for c, good in zip(cases[:3], ok):
        ids, k = m.encode_example(c.request.prompt, c.request.target)
        out = m.greedy(ed.module(), [ids[:k]], [len(ids) - k])[0]
        assert good == (out == ids[k:])


@pytest.mark.parametrize("split", [3, 4])  # inside a group (re-queued edits trained), right after a group end
def test_resume_across_a_group_boundary_with_the_loop_and_a_merge(split):
    # from `split` to 6: group end + loop + merge at 4, group end + loop at 6
    ed, ed2, ckpt = resume_matches("repair", *SMALL, split=split, end=6)
    if split == 4:
        assert ckpt["pending"], "the tiny model should fail some edits, so the checkpoint carries re-queued ones"
    assert ed2.feedback == ed.feedback and ed.feedback["groups"] == 3
    assert ed2.pending == ed.pending and ed2.group == ed.group
