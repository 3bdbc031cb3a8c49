"""A GGUF model converted once, then read as a plain Hugging Face folder.

Reading a GGUF is slow: transformers parses the file, converts its vocabulary into a tokenizer and
de-quantises every tensor, and the file is parsed again for the config, the tokenizer metadata and
the context length (about 40 s of one core for the embedded SmolLM2, on every run, sweep job,
resume and test). The first load writes what it built into the cache; later loads read that:

    <cache_dir>/converted/<GGUF sha256[:16]>/tokenizer-<transformers>-<tokenizers>-<gguf>/
        tokenizer files (`save_pretrained`) + editbench.json (the GGUF's BOS / EOS metadata, its
        context length, the chat template, and the ids of CHECK_TEXTS as the fresh build gave them)
    <cache_dir>/converted/<GGUF sha256[:16]>/<dtype>-<transformers>-<gguf>/
        config.json, generation_config.json, model.safetensors (the de-quantised weights)

The key is the file's content and the library versions that did the conversion, so another GGUF
or another transformers never reads a stale folder. Each folder is written under a temporary
name and renamed into place, so it exists only complete (two processes converting at once each
rename a whole folder; the second rename fails and its copy is dropped); a write that fails (disk
full) is said in one line and the run goes on with what it loaded. A cached tokenizer must
encode CHECK_TEXTS to the ids the fresh build gave (and carry the same chat template), and a
cached folder that cannot be read or fails that check is removed, said in one line, and
converted again. `tests/test_converted.py` holds a converted load to the direct one: token ids on
ZsRE text, special tokens, every weight bit for bit, logits.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from editbench.checkpoint import sha256_file

# encoded by a tokenizer when it is converted and again whenever it is read back: spaces, a double
# space, a newline, digits, punctuation, non-ASCII and a word split into several pieces
CHECK_TEXTS = ("The capital of France is", "What  is the name of the\nriver?", " Paris", "1987 — Zürich, naïve",
               "Who is the director of Titanic?", "antidisestablishmentarianism")
_STALE_S = 3600  # a temporary folder older than this was left by a process that died mid-write


@functools.lru_cache(maxsize=4)
def _sha256(path: str, _size: int, _mtime_ns: int) -> str:
    return sha256_file(Path(path))


def gguf_key(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (hashed once per process and file version)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)[:16]


def _versions(*distributions: str) -> str:
    """The installed versions of the libraries that read and convert the file (`gguf` de-quantises)."""
    from importlib.metadata import version

    return "-".join(version(d) for d in distributions)


def tokenizer_folder(cache_dir: Path, gguf: Path) -> Path:
    return (Path(cache_dir) / "converted" / gguf_key(gguf)
            / f"tokenizer-{_versions('transformers', 'tokenizers', 'gguf')}")


def weights_folder(cache_dir: Path, gguf: Path, dtype: str) -> Path:
    return Path(cache_dir) / "converted" / gguf_key(gguf) / f"{dtype}-{_versions('transformers', 'gguf')}"


def check_ids(tok) -> dict[str, list[int]]:
    return {t: tok(t).input_ids for t in CHECK_TEXTS}


def _publish(write: Callable[[Path], None], final: Path) -> None:
    """`write(tmp)` into a fresh temporary folder beside `final`, then rename it to `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for old in final.parent.glob(".partial-*"):
        try:
            if time.time() - old.stat().st_mtime > _STALE_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:
            pass
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".partial-{final.name}-"))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # a shared cache_dir: readable as any other folder there
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:  # renamed: gone already; otherwise (another process won, or an error) dropped
        shutil.rmtree(tmp, ignore_errors=True)


def _try_publish(write: Callable[[Path], None], final: Path) -> bool:
    """`_publish`, where a failed write (disk full, quota, read-only) only costs the next load its
    speed: said in one line, nothing half-written left. Returns whether the folder is there."""
    try:
        _publish(write, final)
        return True
    except OSError as e:
        print(f"[editbench] could not write the converted model cache {final} ({e.strerror or e}); this run goes "
              f"on, and the next load converts the GGUF again", file=sys.stderr)
        return False


def _discard(folder: Path, why: str) -> None:
    print(f"[editbench] converted model cache {folder} {why}; removed, converting the GGUF again", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)


def cached_tokenizer(cache_dir: Path, gguf: Path, build: Callable[[], tuple], finish: Callable):
    """(tokenizer, info): read from the cache, or `build()` -> (tokenizer, info) and written to it.
    `info` is a JSON-able dict of the GGUF metadata the caller needs again (kept beside the
    tokenizer); `finish(tokenizer, info)` gives a tokenizer read back or built its final form
    (the GGUF's BOS / EOS behaviour) and runs on both paths."""
    folder = tokenizer_folder(cache_dir, gguf)
    if folder.is_dir():
        try:
            from transformers import AutoTokenizer

            info = json.loads((folder / "editbench.json").read_text())
            tok = AutoTokenizer.from_pretrained(str(folder))
            tok.chat_template = info["chat_template"]
            tok = finish(tok, info)
        except Exception as e:  # noqa: BLE001 - any failure to read a cache entry means: build it again
            _discard(folder, f"cannot be read ({type(e).__name__}: {e})")
        else:
            if check_ids(tok) == info["check_ids"]:
                return tok, info
            _discard(folder, "gives other token ids than the tokenizer it was saved from")
    tok, info = build()
    tok = finish(tok, info)
    info = {**info, "chat_template": tok.chat_template, "check_ids": check_ids(tok)}

    def write(tmp: Path) -> None:
        tok.save_pretrained(str(tmp))
        (tmp / "editbench.json").write_text(json.dumps(info, indent=1) + "\n")

    _try_publish(write, folder)
    return tok, info


def cached_weights(cache_dir: Path, gguf: Path, dtype_name: str, dtype, load_gguf: Callable[[], object]):
    """The model from the cache in `dtype`, or from `load_gguf()`, written to the cache first."""
    from transformers import AutoModelForCausalLM

    folder = weights_folder(cache_dir, gguf, dtype_name)
    if folder.is_dir():
        try:
            return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        except Exception as e:  # noqa: BLE001 - any failure to read a cache entry means: convert it again
            _discard(folder, f"cannot be read ({type(e).__name__}: {e})")
    model = load_gguf()
    if _try_publish(lambda tmp: model.save_pretrained(str(tmp), safe_serialization=True), folder):
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"[editbench] de-quantised {gguf.name} ({dtype_name}) written to {folder} ({mb:.0f} MB); later loads "
              f"read it", file=sys.stderr)
    return model
