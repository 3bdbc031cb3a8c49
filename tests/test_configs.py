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
    if group != "experiment":  # experiments are @package _global_
        assert resolved[group]["name"] == name, f"conf/{group}/{name}.yaml: name must equal the file name " \
                                                 "(it names run directories and result rows)"


@pytest.mark.parametrize("name", entries("model"))
def test_model_configs_declare_site_and_horen_calibration(name):
    m = OmegaConf.to_container(compose_config([f"model={name}"]).model, resolve=True)
    assert isinstance(m["edit_site"]["layer"], int) and m["edit_site"]["layer"] >= 0
    assert isinstance(m["edit_site"]["module"], str) and m["edit_site"]["module"]
    assert m["edit_site"]["module"].count(".") >= 1, "path inside a decoder block, e.g. mlp.down_proj"
    assert 0 < float(m["horen"]["threshold"]) <= 1
    assert 0 < float(m["horen"]["pooling_ratio"]) <= 1
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
