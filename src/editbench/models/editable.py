"""`EditableModel`: a causal LM plus everything the protocol needs to edit and score it.

The class is the composition of the other modules of this package: its prompt format
(`text.PromptFormat`) and `batch()` (`text.Batching`), site addressing (`sites.SiteAddressing`)
and the forward passes (`forward.ForwardPasses`). This file holds what ties them together: the
constructor (which checks the edit site), the EOS / pad ids and `until_eos`, and `bind`, which
binds the forward passes run inside it to a `Pass` (`passes.py`) through the `PassSlot` the
site wrappers read.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from editbench.errors import EditbenchError
from editbench.models.forward import ForwardPasses
from editbench.models.passes import Pass, PassSlot
from editbench.models.sites import EditSite, SiteAddressing
from editbench.models.text import Batching, PromptFormat


class EditableModel(SiteAddressing, ForwardPasses, Batching, PromptFormat):
    """A causal LM plus everything the protocol needs to edit and score it."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, edit_site: EditSite, chat_template: bool,
                 system_prompt: str | None = None, device: str = "cpu"):
        super().__init__(tokenizer, chat_template, system_prompt)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.site = edit_site
        self.device = torch.device(device)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is None:
            gen_eos = tokenizer.eos_token_id
        # every id that ends a generation (HF `generate` stops at any of them); the first pads
        self.eos_ids = tuple(int(e) for e in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
        self.eos_id = self.eos_ids[0]
        self.pad_id = self.eos_id  # protocol: pad := eos
        self.passes = PassSlot()  # handed to site wrappers; set by `bind` around every forward
        if not isinstance(getattr(getattr(model, "model", None), "layers", None), nn.ModuleList):
            raise EditbenchError(f"model {name}: {type(model).__name__} keeps no decoder blocks at model.layers — "
                                 f"load its text-only causal LM (a *ForCausalLM class), not a multimodal wrapper")
        n_layers = len(self.blocks)
        if not 0 <= edit_site.layer < n_layers:
            raise EditbenchError(f"model {name}: edit_site.layer={edit_site.layer} but the model has "
                                 f"{n_layers} layers — set model.edit_site.layer in 0..{n_layers - 1}")
        try:
            self.site_module()  # fail early on a bad module path
        except EditbenchError:
            raise EditbenchError(f"model {name}: no module '{edit_site.module}' in decoder block {edit_site.layer} "
                                 f"— fix model.edit_site.module") from None

    @property
    def text_config(self):
        """The language model's config (a multimodal checkpoint nests it as `text_config`)."""
        return getattr(self.model.config, "text_config", self.model.config)

    def mlp_activation(self) -> nn.Module:
        """The MLP's activation function, by the name the model's config gives it (`hidden_act`;
        Gemma's configs call it `hidden_activation`)."""
        from transformers.activations import ACT2FN

        conf = self.text_config
        name = getattr(conf, "hidden_act", None) or getattr(conf, "hidden_activation", None)
        if name is None:
            raise EditbenchError(f"model {self.name}: its config names no MLP activation (hidden_act)")
        return ACT2FN[name]

    def until_eos(self, ids: Sequence[int]) -> list[int]:
        """`ids` up to and including the first EOS id (where HF `generate` stops a sequence)."""
        ids = list(ids)
        ends = [i for i, t in enumerate(ids) if t in self.eos_ids]
        return ids[:ends[0] + 1] if ends else ids

    def bind(self, p: Pass):
        """`with model.bind(Pass(...)):` — the context of the forward passes run inside."""
        return self.passes.bind(p)
