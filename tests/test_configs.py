"""Every YAML in the packaged config tree composes and resolves (STYLE G8: "a config test composes
*every* file in the tree"); model configs carry the edit site and HoReN calibration; every
`_target_` imports."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CONF, compose_config  # noqa: E402

from editbench.__main__ import GROUPS, options  # noqa: E402
from editbench.editors.base import Editor  # noqa: E402


def group_files() -> list[tuple[str, str]]:
    """(group, name) for every YAML below conf/ except the primary config.yaml."""
    out = []
    for p in sorted(CONF.rglob("*.yaml")):
        group = p.parent.relative_to(CONF).as_posix()
        if group != ".":
            out.append((group, p.stem))
    return out


FILES = group_files()
IDS = [f"{g}={n}" for g, n in FILES]


def entries(group: str) -> list[str]:
    return [n for g, n in FILES if g == group]


def test_the_tree_is_not_empty():
    for group in ("editor", "model", "data", "protocol", "logger", "experiment", "hydra/launcher"):
        assert entries(group), f"no YAML in conf/{group}"


def test_every_group_directory_is_listed_by_the_cli():
    """A group added to conf/ but not to GROUPS would be invisible to `editbench ls` and to the
    unknown-option suggestions."""
    assert {g for g, _ in FILES} <= set(GROUPS)
    for group in GROUPS:
        assert set(entries(group)) <= set(options(group)), group


@pytest.mark.parametrize("group,name", FILES, ids=IDS)
def test_every_config_composes_and_resolves(group, name, compose_cfg):
    if group.startswith("hydra/"):
        cfg = compose_cfg([f"{group}={name}"], return_hydra_config=True)
        node = OmegaConf.select(cfg, group.replace("/", "."))
        assert node is not None and "_target_" in node, f"{group}={name} did not land under cfg.{group}"
        get_class(node._target_)  # the launcher plugin is installed
        return
    cfg = compose_cfg([f"{group}={name}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in ("editor", "model", "data", "protocol", "logger", "n_edits", "seed", "resume", "out_dir"):
        assert key in resolved, f"{group}={name}: top-level key {key!r} missing after composition"
    assert int(resolved["n_edits"]) >= 1
    if group not in ("experiment", "editor_model"):  # @package _global_ / editor
        assert resolved[group]["name"] == name, f"conf/{group}/{name}.yaml: name must equal the file name " \
                                                 "(it names run directories and result rows)"


@pytest.mark.parametrize("name", entries("model"))
def test_model_configs_declare_the_site_and_nothing_of_editors(name):
    m = OmegaConf.to_container(compose_config([f"model={name}"]).model, resolve=True)
    assert isinstance(m["edit_site"]["layer"], int) and m["edit_site"]["layer"] >= 0
    assert isinstance(m["edit_site"]["module"], str) and m["edit_site"]["module"]
    assert m["edit_site"]["module"].count(".") >= 1, "path inside a decoder block, e.g. mlp.down_proj"
    assert not set(m) & set(entries("editor")), "per-editor values go to editor_model/<editor>_<model>.yaml"
    assert m["source"] in ("hub", "gguf", "tiny")
    assert m["padding_side"] == "left"
    if m["source"] == "tiny":
        assert m["edit_site"]["layer"] < m["tiny"]["num_hidden_layers"]


@pytest.mark.parametrize("name", entries("editor"))
def test_editor_targets_import(name):
    raw = OmegaConf.load(CONF / "editor" / f"{name}.yaml")
    cls = get_class(raw._target_)
    assert issubclass(cls, Editor), f"{raw._target_} does not implement editors.base.Editor"


@pytest.mark.parametrize("group", ["data", "logger"])
def test_other_targets_import(group):
    for name in entries(group):
        get_class(OmegaConf.load(CONF / group / f"{name}.yaml")._target_)


@pytest.mark.parametrize("name", entries("protocol"))
def test_protocols_are_versioned(name):
    p = compose_config([f"protocol={name}"]).protocol
    assert int(p.version) >= 1
    assert p.scoring in ("greedy", "teacher_forced")
    assert p.retention.mode == "all_so_far"
    assert list(p.checkpoints) == sorted(p.checkpoints)


def test_experiment_smoke_overrides_the_editor():
    cfg = compose_config(["experiment=smoke"])
    assert cfg.editor.name == "ft" and cfg.n_edits == 20


@pytest.mark.parametrize("name", entries("editor_model"))
def test_editor_model_pairs_name_an_editor_and_a_model_and_only_its_keys(name):
    """editor_model/<editor>_<model>.yaml: tuned values for one pair, merged into `editor`."""
    editor, model = next((e, name[len(e) + 1:]) for e in entries("editor") if name.startswith(e + "_"))
    assert model in entries("model"), f"{name}: no model '{model}'"
    raw = OmegaConf.load(CONF / "editor_model" / f"{name}.yaml")
    base = OmegaConf.load(CONF / "editor" / f"{editor}.yaml")
    assert set(raw) <= set(base) - {"_target_", "name"}, f"{name}: keys the editor does not have"
    cfg = compose_config([f"editor={editor}", f"model={model}"])
    assert all(cfg.editor[k] == raw[k] for k in raw)


@pytest.mark.parametrize("overrides,threshold,rho", [
    (["model=smollm2_135m"], 0.7, 0.6),  # calibrated
    (["model=qwen25_7b"], 0.55, 0.6),  # paper Table 3
    (["model=llama3_8b"], 0.85, 0.5),
    (["model=smollm2_135m", "experiment=grace_norm"], 0.7, 0.6),  # an experiment that picks horen
    (["model=smollm2_135m", "editor.threshold=0.6"], 0.6, 0.6),  # the command line wins
])
def test_horen_tau_rho_come_from_the_pair_file(overrides, threshold, rho):
    e = compose_config(overrides, tiny=False).editor
    assert (e.name, e.threshold, e.pooling_ratio) == ("horen", threshold, rho)
    assert "threshold" not in compose_config(["editor=grace", *overrides[:1]], tiny=False).editor


@pytest.mark.parametrize("experiment,editor,published", [
    ("wise_published", "wise", {"act_margin": [5.0, 20.0, 10.0], "act_ratio": 0.88}),
    ("ultraedit_published", "ultraedit", {"lr": 1.0e-6}),
    ("alphaedit_published", "alphaedit", {"v_lr": 0.1, "v_weight_decay": 0.5, "clamp_norm_factor": 0.75, "l2": 10.0}),
])
def test_published_experiments_override_the_models_calibrated_values(experiment, editor, published):
    """SmolLM2's calibrated values live in its pair file; `experiment=<editor>_published` puts the
    paper's values back (the published row of every calibrated editor stays reachable)."""
    calibrated = compose_config([f"editor={editor}", "model=smollm2_135m"], tiny=False).editor
    restored = compose_config([f"experiment={experiment}", "model=smollm2_135m"], tiny=False).editor
    assert restored.name == editor
    assert {k: restored[k] for k in published} == published
    assert {k: calibrated[k] for k in published} != published
    assert restored.get("layers") == calibrated.get("layers")  # the model's layers stay


@pytest.mark.parametrize("name", entries("editor"))
def test_editor_defaults_live_in_yaml_only(name):
    """Every hyper-parameter is a named constructor parameter without a default, and the YAML
    sets each one: Python and YAML can never disagree, and no `**kwargs` swallows a typo."""
    import inspect

    raw = OmegaConf.load(CONF / "editor" / f"{name}.yaml")
    params = dict(inspect.signature(get_class(raw._target_).__init__).parameters)
    params.pop("self"), params.pop("model")
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params.values()), params
    assert set(params) == set(raw) - {"_target_", "name"}
