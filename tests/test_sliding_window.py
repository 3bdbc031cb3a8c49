"""The model adapter's passes on a model with sliding-window attention: `tiny_gemma3` (Gemma-3's
block; a 6-token window; layers sliding / global / sliding / global), whose ZsRE prompts are longer
than the window. Splitting the network at any layer (`prefix` + `suffix_hidden`), with or without
the KV cache of the positions before the last prompt token, with the last MLP run only where it
is read, and with the suffix's attention mask reused on a later pass over the same prefix, gives
the full forward pass's hidden states; KV-cached greedy decoding equals uncached decoding. The
editor conformance test runs every editor on this model too (tests/test_editor_conformance.py)."""
from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from editbench.models import Pass, load_model

ALL_SLIDING_TOP = "model.tiny.extra.layer_types=[full_attention,full_attention,sliding_attention,sliding_attention]"
PAIRS = [("What is the birth place of Julia Montgomery?", "Kansas City"),
         ("Which river flows through Cairo?", "Nile"),
         ("Who was the director of the film The Giger Bar?", "H. R. Giger")]


def _model(*overrides: str):
    return load_model(compose_config(["model=tiny_gemma3", *overrides]).model)


@pytest.fixture(scope="module")
def gemma():
    return _model()


def _batch(m):
    return m.batch([m.encode_example(p, a) for p, a in PAIRS])


def _full(m, batch) -> torch.Tensor:
    with torch.no_grad(), m.bind(Pass("prefill", batch.prompt_mask)):
        return m.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids, use_cache=False).last_hidden_state


def test_the_window_is_shorter_than_the_inputs_and_changes_the_outputs(gemma):
    conf = gemma.text_config
    assert conf.sliding_window == 6 and conf.layer_types[gemma.site.layer] == "sliding_attention"
    assert "full_attention" in conf.layer_types
    batch = _batch(gemma)
    assert int(batch.attention_mask.sum(1).min()) > 2 * conf.sliding_window
    global_only = _model("model.tiny.extra.layer_types=[full_attention,full_attention,full_attention,full_attention]")
    assert not torch.allclose(_full(gemma, batch), _full(global_only, batch))


@pytest.mark.parametrize("top", ["mixed", "all_sliding"])
@pytest.mark.parametrize("from_last_prompt", [False, True])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_the_split_at_any_layer_gives_the_full_pass(gemma, layer, from_last_prompt, top):
    m = gemma if top == "mixed" else _model(ALL_SLIDING_TOP)
    batch = _batch(m)
    full = _full(m, batch)
    with torch.no_grad():
        pre = m.prefix(batch, from_last_prompt=from_last_prompt, layer=layer)
        assert (pre.start > 0) == from_last_prompt
        first = m.suffix_hidden(pre, Pass("prefill", pre.batch.prompt_mask))
        again = m.suffix_hidden(pre, Pass("prefill", pre.batch.prompt_mask))  # with the recorded mask, if any
        needed = pre.batch.predicts_label
        only = m.suffix_hidden(pre, Pass("prefill", pre.batch.prompt_mask), needed=needed)
    real = batch.attention_mask[:, pre.start:].bool()
    torch.testing.assert_close(first[real], full[:, pre.start:][real], rtol=0, atol=1e-5)
    assert torch.equal(first, again)
    torch.testing.assert_close(only[needed], first[needed], rtol=0, atol=1e-5)
    if top == "all_sliding" and layer >= 2 and not from_last_prompt:
        assert pre.mask is not None  # every suffix block is sliding: one mask, recorded and reused


def test_cached_and_uncached_greedy_decoding_agree_past_the_window(gemma):
    prompts = [gemma.encode_prompt(p) for p, _ in PAIRS]
    n_new = [12] * len(prompts)  # prompt + answer well past the 6-token window
    cached = gemma.greedy(gemma.model, prompts, n_new)
    assert cached == gemma.greedy(gemma.model, prompts, n_new, use_cache=False)
