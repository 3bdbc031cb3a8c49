"""The user's command path, `python -m editbench model=qwen25_7b|llama31_8b ... data.hub=...`, executed
on the CPU: each paper model's config entry (its edit-site layer, bf16, its loader) with
`model.path=` pointing at a random model of the real architecture (`paper_models.py`: every layer,
shrunk in width) and `data.hub=` pointing at a local parquet dataset, so the hub loading code
runs for both. HoReN, GRACE and ROME (a weight editor with its second-moment statistics) each
edit a few records to the end of the grid."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_in_process, compose_config, read_rows, read_summary, run_dirs  # noqa: E402
from paper_models import ARCHITECTURES, save_parquet_records, save_random_model  # noqa: E402

pytestmark = pytest.mark.slow
N_EDITS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_models")
    models = {name: save_random_model(name, root / name) for name in ARCHITECTURES}
    return models, save_parquet_records(root / "zsre_parquet", 20)


def read_pool_ids(folder: Path) -> list[str]:
    import datasets

    return [r["id"] for r in datasets.load_dataset(str(folder), split="train")]


def editbench(*args: str) -> tuple[int, str]:
    """`python -m editbench <args>` in this process: exit code and stderr."""
    p = run_in_process(*args)
    return p.returncode, p.stderr


def test_the_saved_model_is_the_real_architecture_in_bf16(folders):
    from transformers import AutoConfig
    from safetensors import safe_open


    models, _ = folders
    for name, folder in models.items():
        conf = AutoConfig.from_pretrained(folder)
        cfg = compose_config([f"model={name}"], tiny=False).model
        assert conf.model_type == ARCHITECTURES[name][0]["model_type"]
        assert conf.num_hidden_layers == ARCHITECTURES[name][0]["num_hidden_layers"] > cfg.edit_site.layer
        assert cfg.dtype == "bfloat16"
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


@pytest.mark.parametrize("editor", ["horen", "grace", "rome"])
@pytest.mark.parametrize("model", sorted(ARCHITECTURES))
def test_paper_model_command_runs_end_to_end(folders, tmp_path, model, editor):
    models, data = folders
    extra = ["editor.mom2_n_samples=64", "editor.mom2_max_length=64", "editor.v_num_grad_steps=4",
             "editor.template_lengths=[5]", "editor.templates_per_seed=1"] if editor == "rome" else []
    code, err = editbench(f"model={model}", f"model.path={models[model]}", f"editor={editor}", f"data.hub={data}",
                          "data.order_seed=null", f"n_edits={N_EDITS}", "threads=1", f"out_dir={tmp_path / 'out'}",
                          f"cache_dir={tmp_path / 'cache'}", *extra)
    assert code == 0, err[-3000:]
    (run,) = run_dirs(tmp_path / "out")
    assert read_summary(run)["status"] == "complete"
    rows = read_rows(run)
    assert rows[-1]["N"] == N_EDITS and rows[-1]["model"] == model
    assert rows[-1]["edit_layer"] == compose_config([f"model={model}"], tiny=False).model.edit_site.layer
    first = json.loads(next(iter(gzip.open(sorted((run / "records").glob("*.jsonl.gz"))[0], "rt"))))
    assert first["case"] == read_pool_ids(data)[0]  # the stream came from the parquet, through the hub loader
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in ("rel", "gen", "loc"))


def test_the_50k_projection_counts_the_real_architecture():
    """LLaMA-3.1-8B's parameter count from the widths the projection uses (8.03 B, its model card's),
    and the work a projected edit and probe carry, by hand."""
    from conftest import load_script

    proj = load_script("project_50k")
    t = proj.TARGET
    total = t["layers"] * proj.block_params(t) + 2 * t["hidden"] * t["vocab"] + 2 * t["hidden"]
    assert round(total / 1e9, 2) == 8.03
    m = {"N": 100, "steps_per_edit": 10.0, "edit_tokens": 10.0, "answer_tokens": 2.0, "probe_tokens": 12.0,
         "smollm2_edit_s_mean": 1.0}
    out = proj.project(m)
    bp, head = proj.block_params(t), t["hidden"] * t["vocab"]
    assert out["edit_tflop"] * 1e12 == pytest.approx(2 * 29 * bp * 10 + 10 * 4 * (3 * bp * 10 + head * 2))
    assert out["probes_evaluated"] == 3 * (10 + 100 + 500 + 1000 + 2000 * 7)
    assert out["paper_rate"]["edits_h"] == pytest.approx(50_000 * 1.670 / 3600)


def test_the_readme_projection_block_is_generated_between_its_markers(tmp_path):
    from editbench.report.projection import BEGIN, END, projection_markdown
    from editbench.report.writer import write_marked

    from conftest import load_script

    proj = load_script("project_50k")
    p = {"measured": {"N": 100, "steps_per_edit": 10.0, "edit_tokens": 10.0, "answer_tokens": 2.0,
                      "probe_tokens": 12.0}, "time": "t"}
    p.update(proj.project(p["measured"]))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\nrest\n")
    write_marked(readme, BEGIN, END, projection_markdown(p))
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith(f"{END}\nrest\n")
    assert f"{p['paper_rate']['total_h']:.1f} h" in text and "A projection, not a measurement" in text
    plain = tmp_path / "other.md"
    plain.write_text("no markers\n")
    write_marked(plain, BEGIN, END, "x")
    assert plain.read_text() == "no markers\n"
