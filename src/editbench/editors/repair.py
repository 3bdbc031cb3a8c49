"""REPAIR (Wang et al. 2025, arXiv:2510.01879; docs/editors.md#repair): WISE-Retrieve's side memory (`_side_memory`) closed into a loop.

- **In-group distillation**: a group is one knowledge shard (`save_freq` edits). The group's first
  edit trains as in WISE and its final answer-position logits become the teacher; every later
  edit of the group adds `kd_weight * T^2 * mean KL(softmax(teacher / T) || softmax(student / T))`
  over the answer positions both have, aligned by (template row, answer-token index).
- **Closed-loop error feedback**: when a group's last edit is trained (before its shard is
  saved), every edit of the group is re-checked by greedy decoding of |target| tokens through the
  router (an error unless the ids equal the target's exactly). When the group's accuracy is below
  `error_threshold`, the saved memory that most failed edits were routed to is re-initialised (it
  had captured this group's prompts) and the failed edits are re-queued into the next group: they
  are trained first into its new shard (the reference puts the error samples at the front of the
  next batch) and checked again at its end. At most `save_freq` failed edits are re-queued per
  group, in group order (the reference's next batch holds at most one batch of error samples and
  drops the rest), and an edit at most `max_iterations` times; the others are dropped (counted).
  So a group trains at most 2 x `save_freq` edits. Re-queued edits left when the stream ends stay
  untrained (counted).
- **Loss-weighted TIES** (a reconstruction; the public code merges with equal weights): memory i
  of a merge group gets weight softmax(-L_i / `loss_temperature`), L_i = the mean final training
  loss of its edits.

Implementation choices (docs/editors.md#repair): re-initialising a memory
resets it to W with an infinite routing bar (it never fires again; the reference draws
Xavier-uniform weights and resets its tracker, which has the same effect on routing); the open
shard is never re-initialised (it holds the group's correct edits; the reference's re-init only
reaches saved memories too); the re-queued edits are trained in the next group's first `edit()`
call, so every call ends at a checkpointable point; distillation compares answer positions (the reference aligns the padded full sequences
by index, prompt tokens of different questions included).
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter

import torch
from torch.nn import functional as F

from editbench.data import EditRequest
from editbench.editors._side_memory import ActMargins, SideMemoryEditor, Trained
from editbench.validate import (Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveFraction,
                                PositiveInt)


class REPAIR(SideMemoryEditor):
    label = "REPAIR"

    def __init__(self, model, lr: PositiveFloat, n_iter: PositiveInt,
                 mask_ratio: PositiveFraction,
                 act_margin: ActMargins,
                 act_ratio: PositiveFloat, norm_constraint: PositiveFloat, weight_decay: NonNegativeFloat,
                 save_freq: PositiveInt, merge_freq: PositiveInt, density: PositiveFraction,
                 template_seeds: list[str], template_lengths: list[PositiveInt],
                 distill: bool, kd_temperature: PositiveFloat, kd_weight: NonNegativeFloat,
                 max_iterations: NonNegativeInt, error_threshold: Fraction, loss_temperature: PositiveFloat,
                 check_batch_size: PositiveInt):
        super().__init__(model, lr=lr, n_iter=n_iter, mask_ratio=mask_ratio, act_margin=list(act_margin),
                         act_ratio=act_ratio, norm_constraint=norm_constraint, weight_decay=weight_decay,
                         save_freq=save_freq, merge_freq=merge_freq, density=density,
                         template_seeds=list(template_seeds), template_lengths=list(template_lengths),
                         distill=distill, kd_temperature=kd_temperature, kd_weight=kd_weight,
                         max_iterations=max_iterations, error_threshold=error_threshold,
                         loss_temperature=loss_temperature, check_batch_size=check_batch_size)
        self.group: list[tuple[EditRequest, int]] = []  # the open shard's edits: (request, times re-queued)
        self.pending: list[tuple[EditRequest, int]] = []  # failed edits re-queued into the next group
        self.teacher: tuple[torch.Tensor, list[int]] | None = None  # the group's first edit: (logits, counts)
        self.feedback = {"groups": 0, "failed_groups": 0, "retrained": 0, "reinitialised": 0, "dropped": 0,
                         "last_accuracy": None}

    # ------------------------------------------------------------------ groups and distillation
    def start_shard(self) -> None:
        """A new group: a fresh mask, no teacher, and the previous group's failed edits trained
        first (the first of them becomes the teacher)."""
        super().start_shard()
        self.group, self.teacher = [], None
        carried, self.pending = self.pending, []
        for request, requeued in carried:
            self.group.append((request, requeued))
            self.train_edit(request)
            self.feedback["retrained"] += 1

    def add_edit(self, request) -> None:
        self.group.append((request, 0))
        self.train_edit(request)

    def train_edit(self, request) -> Trained:
        trained = super().train_edit(request)
        if self.hparams["distill"] and self.teacher is None:
            self.teacher = (trained.logits, trained.counts)
        return trained

    def extra_loss(self, logits: torch.Tensor, counts: list[int]) -> torch.Tensor | None:
        if not self.hparams["distill"] or self.teacher is None:
            return None
        t_logits, t_counts = self.teacher
        s_idx, t_idx, s0, t0 = [], [], 0, 0
        for ns, nt in zip(counts, t_counts):  # the same templates: row r of one edit is row r of the other
            n = min(ns, nt)
            s_idx += range(s0, s0 + n)
            t_idx += range(t0, t0 + n)
            s0, t0 = s0 + ns, t0 + nt
        T = self.hparams["kd_temperature"]
        kl = F.kl_div(F.log_softmax(logits[s_idx] / T, dim=-1), F.softmax(t_logits[t_idx].to(logits.device) / T, dim=-1),
                      reduction="none").sum(-1).mean()
        return self.hparams["kd_weight"] * T * T * kl

    # ------------------------------------------------------------------ closed loop
    @torch.no_grad()
    def check(self, requests) -> tuple[list[bool], list[int]]:
        """Per request: does greedy decoding of |target| tokens reproduce the target ids exactly,
        and which memory does the router send its prompt to (index into `_weights()`, -1 none)."""
        m, n = self.model, self.hparams["check_batch_size"]
        ok, routes = [], []
        for i in range(0, len(requests), n):
            rows = [m.encode_example(r.prompt, r.target) for r in requests[i:i + n]]
            prompts, targets = [ids[:k] for ids, k in rows], [ids[k:] for ids, k in rows]
            outs = m.greedy(self.module(), prompts, [len(t) for t in targets])
            ok += [o == t for o, t in zip(outs, targets)]
            batch = m.batch([(p, len(p)) for p in prompts])
            x, y0 = m.site_io(batch)
            routes += self.route(x, y0, batch.prompt_mask).tolist()
        return ok, routes

    def end_shard(self) -> None:
        hp = self.hparams
        self.feedback["groups"] += 1
        ok, routes = self.check([r for r, _ in self.group])
        accuracy = sum(ok) / len(ok)
        self.feedback["last_accuracy"] = accuracy
        if accuracy >= hp["error_threshold"]:
            return
        self.feedback["failed_groups"] += 1
        failed = [i for i, good in enumerate(ok) if not good]
        stolen = Counter(routes[i] for i in failed if routes[i] >= 1)  # saved memories (0 = the open shard)
        if stolen:
            worst = max(stolen, key=lambda i: (stolen[i], i))
            self.memories[worst - 1].update(weight=self.W.clone(), min_a=math.inf, loss=math.inf)
            self.feedback["reinitialised"] += 1
        for i in failed:  # re-queued into the next group: at most one group's worth, each at most max_iterations times
            request, requeued = self.group[i]
            if requeued < hp["max_iterations"] and len(self.pending) < hp["save_freq"]:
                self.pending.append((request, requeued + 1))
            else:
                self.feedback["dropped"] += 1

    # ------------------------------------------------------------------ merging
    def merge_coefficients(self, group: list[dict]) -> list[float] | None:
        losses = torch.tensor([g["loss"] for g in group], dtype=torch.float64)
        if not torch.isfinite(losses).any():
            return None
        return torch.softmax(-losses / self.hparams["loss_temperature"], dim=0).tolist()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["group"] = [(dataclasses.asdict(r), n) for r, n in self.group]
        sd["pending"] = [(dataclasses.asdict(r), n) for r, n in self.pending]
        sd["teacher"] = None if self.teacher is None else (self.teacher[0].cpu().clone(), list(self.teacher[1]))
        sd["feedback"] = dict(self.feedback)
        return sd

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.group = [(EditRequest(**r), n) for r, n in sd["group"]]
        self.pending = [(EditRequest(**r), n) for r, n in sd["pending"]]
        self.teacher = None if sd["teacher"] is None else (sd["teacher"][0].to(self.W.device), list(sd["teacher"][1]))
        self.feedback = dict(sd["feedback"])

    def report(self) -> dict:
        return {**super().report(), "feedback": {**self.feedback, "pending": len(self.pending)}}
