"""The one seam that turns a config into what a run is made of.

`build(cfg)` validates the config once, then builds, in this order (each step may depend on the
ones before): seeds → dataset adapter and its edit stream → tokenizer (every edit and probe checked
against the model's context length before any weight loads) → model → evaluator (with the
unedited-state cache) → the unedited model's reference outputs → editor → the editor's one-time
setup. The runner, the test fixtures, the scripts and the benchmark all build through it, so they
build exactly what the runner builds.

    run = build(cfg)                                 # everything, as the runner needs it
    run = build(cfg, n_cases=3, references=False)    # a quick editor + stream (tests, benchmarks)
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from editbench.checkpoint import read_references, write_references
from editbench.costs import resident_gb
from editbench.data import EditCase
from editbench.data.stream import RecordStream
from editbench.editors.base import Editor, SetupContext
from editbench.errors import EditbenchError
from editbench.evaluate import Evaluator, state_cache
from editbench.models import EditableModel, PromptFormat, load_model, load_prompt_format
from editbench.validate import Protocol, check_config, check_environment


@dataclass
class Run:
    """Everything one run is built from. `refs[i]` are case i's unedited reference outputs (None
    when built with `references=False`); `baseline_gb` is the resident memory just before the
    editor was built (model, data and references loaded), what the editor's growth is measured
    from; `setup_s` is the editor's one-time setup time, apart from editing."""

    cfg: DictConfig
    data: RecordStream  # the dataset adapter
    cases: list[EditCase]
    model: EditableModel
    evaluator: Evaluator
    editor: Editor
    refs: list[dict] | None
    baseline_gb: float
    setup_s: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def instantiate_group(node: DictConfig, **kwargs):
    """Build a config-group object whose values are already checked (`validate.check_config`);
    `name` is bookkeeping, not a constructor argument. Our own errors come out unwrapped (Hydra
    wraps constructor exceptions in InstantiationException)."""
    from hydra.errors import InstantiationException

    cfg = OmegaConf.to_container(node, resolve=True)
    cfg.pop("name", None)
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, EditbenchError):
            raise e.__cause__ from None
        raise EditbenchError(f"cannot build {cfg.get('_target_')}: {' '.join(str(e).split())[:300]} "
                             f"— check the group's keys and values") from None


def check_lengths(cases: list[EditCase], text: PromptFormat, context: int, model_name: str) -> None:
    """Every edit request and probe, with its answer, must fit the model's context length."""
    if context <= 0:  # the model does not say
        return
    items = [(c.id, "edit", c.request.prompt, c.request.target) for c in cases]
    items += [(c.id, name, p.prompt, p.answer) for c in cases for name, ps in c.probes.items() for p in ps.probes]
    lengths = text.example_lengths([(p, a) for _, _, p, a in items])
    worst = max(range(len(items)), key=lengths.__getitem__)
    if lengths[worst] > context:
        case_id, what, _, _ = items[worst]
        raise EditbenchError(f"record {case_id}: its {what} prompt with its answer is {lengths[worst]} tokens, more "
                             f"than {model_name}'s context length ({context}) — shorten or drop that record in "
                             f"the data file")


def validate(cfg: DictConfig) -> None:
    """Every value of a composed config and what the machine must offer it (one `EditbenchError`
    line on the first problem). `build` calls it; the command line calls it before Hydra creates a
    run directory."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    check_config(container)
    check_environment(container)


def max_new_tokens(protocol: DictConfig) -> int:
    """The free-text generation cap of a protocol (its default when the protocol does not set it)."""
    return int(protocol.get("max_new_tokens", Protocol.model_fields["max_new_tokens"].default))


def reference_key(cfg: DictConfig, model, cases: Sequence[EditCase]) -> str:
    """What the unedited reference outputs of `cases` depend on, hashed: the model's config and
    device, the scoring, the generation cap, every probe, and the evaluator's reference version."""
    what = {"model": OmegaConf.to_container(cfg.model, resolve=True), "device": str(model.device),
            "scoring": cfg.protocol.scoring, "max_new_tokens": max_new_tokens(cfg.protocol),
            "version": Evaluator.REFERENCE_VERSION,
            "probes": [[c.id, name, p.prompt, p.answer] for c in cases for name, ps in c.probes.items()
                       for p in ps.probes]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def stream_and_evaluator(cfg: DictConfig, n_cases: int | None = None) -> tuple[RecordStream, list[EditCase], Evaluator]:
    """A run's dataset, the first `n_cases` cases of its stream (default `cfg.n_edits`), and its
    evaluator on the loaded, unedited model (`evaluator.m`)."""
    data = instantiate_group(cfg.data)
    cases = data.stream(int(cfg.n_edits) if n_cases is None else n_cases)
    cache_dir = Path(cfg.cache_dir).expanduser()
    text, context = load_prompt_format(cfg.model, cache_dir)
    check_lengths(cases, text, context, cfg.model.name)
    model = load_model(cfg.model, text, cache_dir)
    proto = cfg.protocol
    evaluator = Evaluator(model, proto.scoring, proto.eval_batch_size, state_cache(cfg, proto.scoring),
                          max_new_tokens=max_new_tokens(proto))
    return data, cases, evaluator


def build(cfg: DictConfig, *, n_cases: int | None = None, references: bool = True, validated: bool = False,
          references_file: Path | None = None, log=print) -> Run:
    """Validate `cfg` (unless the caller just did: `validated=True`) and build its run: the first
    `n_cases` cases of the stream (default `cfg.n_edits`), the model, the evaluator, the unedited
    references (unless `references=False`) and the editor, set up on the unedited model. With
    `references_file` (the run directory's), references kept there for this very key are read
    back instead of computed, and computed ones are kept there: a resumed run does not pay for
    them again."""
    if not validated:
        validate(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    seed = int(cfg.seed)
    seed_everything(seed)
    data, cases, evaluator = stream_and_evaluator(cfg, n_cases)
    model, cache_dir = evaluator.m, Path(cfg.cache_dir).expanduser()
    refs = None
    if references:
        t0 = time.perf_counter()
        key = reference_key(cfg, model, cases) if references_file else None
        refs = read_references(references_file, key) if references_file else None
        how = f"read from {references_file.name}" if refs is not None else None
        if refs is None:
            refs = evaluator.reference(cases)  # the unedited model's outputs, before any editor touches it
            if references_file:
                write_references(references_file, key, refs)
            how = f"in {time.perf_counter() - t0:.1f}s"
        log(f"[editbench] unedited reference outputs: {sum(len(v) for r in refs for v in r.values())} probes {how}")
    baseline_gb = resident_gb(model.device)  # before the editor exists: its growth is measured from here
    editor = instantiate_group(cfg.editor, model=model)
    t0 = time.perf_counter()
    editor.setup(SetupContext(cache_dir=cache_dir, seed=seed, aux=data.aux(cases)))
    setup_s = time.perf_counter() - t0
    return Run(cfg, data, cases, model, evaluator, editor, refs, baseline_gb, setup_s)
