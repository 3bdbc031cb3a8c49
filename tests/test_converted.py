"""The converted-model cache (models/converted.py): a GGUF's tokenizer and de-quantised weights
written once as a Hugging Face folder and read back by later loads. Read back, they must be what
the GGUF gives: the same token ids, special tokens, weights bit for bit and logits. The mechanics
(written once, read after, a damaged or disagreeing entry rebuilt, two writers) run on the tiny
model with a stand-in "GGUF" file (the cache keys on the file's bytes only)."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from conftest import compose_config
from editbench.models import converted
from editbench.models.loading import _follow_gguf_flags, load_model, load_prompt_format

TINY_META = {"bos_token": 0, "eos_token": 1, "add_bos_token": True}


@pytest.fixture
def tiny(tmp_path):
    """(cache_dir, stand-in GGUF file, tiny model, its tokenizer)."""
    m = load_model(compose_config(["model=tiny_llama"]).model)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    return tmp_path / "cache", gguf, m.model, m.tok


def _tokenizer(cache, gguf, tok, calls):
    def build():
        calls.append("build")
        return tok, {"tokenizer_metadata": TINY_META, "context_length": 512}

    return converted.cached_tokenizer(cache, gguf, build, lambda t, i: _follow_gguf_flags(t, i["tokenizer_metadata"], "x"))


def _weights(cache, gguf, model, calls):
    def load():
        calls.append("load")
        return model

    return converted.cached_weights(cache, gguf, "float32", torch.float32, load)


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    assert all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    ids = torch.tensor([[0, 284, 222, 277, 265, 1531, 1189]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_built_once_then_read_back_equal(tiny):
    cache, gguf, model, tok = tiny
    calls = []
    tok1, info1 = _tokenizer(cache, gguf, tok, calls)
    m1 = _weights(cache, gguf, model, calls)
    tok2, info2 = _tokenizer(cache, gguf, tok, calls)
    m2 = _weights(cache, gguf, model, calls)
    assert calls == ["build", "load"]  # the second loads read the cache
    assert info2 == info1 and info1["context_length"] == 512
    text = "What  is the capital of France?\nParis"
    assert tok2(text).input_ids == tok1(text).input_ids and tok2(text).input_ids[0] == 0  # one BOS, as declared
    assert tok2.decode(tok1(text).input_ids) == tok1.decode(tok1(text).input_ids)
    assert (tok2.bos_token, tok2.eos_token, tok2.chat_template) == (tok1.bos_token, tok1.eos_token, tok1.chat_template)
    _same_model(m1, m2)
    key = converted.gguf_key(gguf)
    folders = sorted(p.name for p in (cache / "converted" / key).iterdir())
    assert folders == sorted([converted.tokenizer_folder(cache, gguf).name, converted.weights_folder(cache, gguf, "float32").name])
    # another file (another GGUF) is another entry
    gguf.write_bytes(b"another GGUF")
    assert converted.gguf_key(gguf) != key


def test_unreadable_weights_are_converted_again(tiny, capsys):
    cache, gguf, model, tok = tiny
    calls = []
    _weights(cache, gguf, model, calls)
    (converted.weights_folder(cache, gguf, "float32") / "model.safetensors").write_bytes(b"truncated")
    m = _weights(cache, gguf, model, calls)
    assert calls == ["load", "load"]
    assert "cannot be read" in capsys.readouterr().err
    _same_model(m, _weights(cache, gguf, model, calls))
    assert calls == ["load", "load"]  # the rewritten entry reads back


def test_a_tokenizer_giving_other_ids_is_built_again(tiny, capsys):
    cache, gguf, model, tok = tiny
    calls = []
    _tokenizer(cache, gguf, tok, calls)
    meta = converted.tokenizer_folder(cache, gguf) / "editbench.json"
    info = json.loads(meta.read_text())
    info["check_ids"][converted.CHECK_TEXTS[0]] = [5, 6, 7]  # as if another library version encoded it
    meta.write_text(json.dumps(info))
    tok2, _ = _tokenizer(cache, gguf, tok, calls)
    assert calls == ["build", "build"]
    assert "other token ids" in capsys.readouterr().err
    assert json.loads(meta.read_text())["check_ids"] == converted.check_ids(tok2)


def test_a_second_writer_drops_its_copy_and_stale_partials_go(tiny):
    cache, gguf, model, tok = tiny
    final = converted.weights_folder(cache, gguf, "float32")
    final.parent.mkdir(parents=True)
    stale = final.parent / ".partial-old"
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    fresh = final.parent / ".partial-live"  # another process writing now
    fresh.mkdir()

    def write(tmp):  # another process renames its complete folder first
        (tmp / "mine").write_text("x")
        final.mkdir()
        (final / "theirs").write_text("y")

    converted._publish(write, final)
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert sorted(p.name for p in final.parent.iterdir()) == [".partial-live", final.name]


def test_a_full_disk_costs_only_the_cache(tiny, capsys, monkeypatch):
    """A cache write that fails (ENOSPC) leaves no folder and no partial one; the load goes on."""
    cache, gguf, model, tok = tiny

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", full)
    assert _weights(cache, gguf, model, []) is model
    assert "No space left on device" in capsys.readouterr().err
    assert not converted.weights_folder(cache, gguf, "float32").exists()
    assert list(converted.weights_folder(cache, gguf, "float32").parent.iterdir()) == []


@pytest.mark.slow
def test_smollm2_read_back_equals_the_gguf_load(tmp_path):
    """The embedded model, loaded from its GGUF (first load: builds and writes the cache) and read
    back: the ids of every prompt, prompt + answer and answer of 200 ZsRE cases, BOS / EOS / pad,
    EOS from the generation config, the config, every weight and the logits."""
    from editbench.build import instantiate_group

    cfg = compose_config(["model=smollm2_135m", "model.device=cpu"], tiny=False)
    loads = []
    for _ in range(2):
        text, context = load_prompt_format(cfg.model, tmp_path)
        loads.append((text, context, load_model(cfg.model, text, tmp_path)))
    assert (tmp_path / "converted").is_dir()
    (t1, c1, m1), (t2, c2, m2) = loads
    assert c1 == c2 == 8192
    cases = instantiate_group(cfg.data).stream(200)
    for c in cases:
        for prompt, answer in [(c.request.prompt, c.request.target)] + \
                [(p.prompt, p.answer) for ps in c.probes.values() for p in ps.probes]:
            for enc in (lambda t: t.encode_prompt(prompt), lambda t: t.encode_example(prompt, answer),
                        lambda t: t.encode_answer(answer)):
                assert enc(t2) == enc(t1), (prompt, answer)
            ids = t1.encode_example(prompt, answer)[0]
            assert t2.tok.decode(ids) == t1.tok.decode(ids)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side", "chat_template"):
        assert getattr(t2.tok, attr) == getattr(t1.tok, attr), attr
    assert t2.tok("a").input_ids == t1.tok("a").input_ids == [81]  # no BOS (the GGUF says add_bos_token = False)
    assert (m2.eos_ids, m2.pad_id) == (m1.eos_ids, m1.pad_id) == ((2,), 2)
    skip = {"_name_or_path", "transformers_version"}
    assert {k: v for k, v in m2.model.config.to_dict().items() if k not in skip} == \
           {k: v for k, v in m1.model.config.to_dict().items() if k not in skip}
    sa, sb = m1.model.state_dict(), m2.model.state_dict()
    assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    assert m2.model.lm_head.weight.data_ptr() == m2.model.model.embed_tokens.weight.data_ptr()  # still tied
    batch = m1.batch([t1.encode_example(c.request.prompt, c.request.target) for c in cases[:8]])
    with torch.no_grad():
        assert torch.equal(m1.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                           m2.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)
