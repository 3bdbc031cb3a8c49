"""Site addressing: where in the network an editor reads or writes.

* `EditSite`: a (decoder block, module path inside the block) address, e.g. (2, "mlp.down_proj");
* `SiteAddressing`: a mixin of `EditableModel` (which supplies `model`, `name` and `site`, the
  model config's edit site): the decoder blocks, the module at any site, swapping a module in
  (where site wrappers are installed) and the edit site's input / output widths.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from editbench.errors import EditbenchError


@dataclass
class EditSite:
    layer: int
    module: str  # path inside the decoder block, e.g. "mlp.down_proj"


class SiteAddressing:
    """The site-addressing methods of `EditableModel` (a mixin: needs `model`, `name`, `site`)."""

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.layers

    def module_at(self, site: EditSite) -> nn.Module:
        """The module at any (layer, path inside the block) site — what is installed there now."""
        if not 0 <= site.layer < len(self.blocks):
            raise EditbenchError(f"model {self.name}: layer {site.layer} does not exist (0..{len(self.blocks) - 1})")
        try:
            return self.blocks[site.layer].get_submodule(site.module)
        except AttributeError:
            raise EditbenchError(f"model {self.name}: no module '{site.module}' in decoder block "
                                 f"{site.layer} — fix the site's module path") from None

    def replace_at(self, site: EditSite, new: nn.Module) -> nn.Module:
        """Put `new` where the module at `site` is; returns the module that was there."""
        parent_path, _, leaf = site.module.rpartition(".")
        block = self.blocks[site.layer]
        parent = block.get_submodule(parent_path) if parent_path else block
        old = getattr(parent, leaf)
        setattr(parent, leaf, new)
        return old

    def site_module(self) -> nn.Module:
        """The module at the model config's edit site (the one site aligned editors share)."""
        return self.module_at(self.site)

    def replace_site(self, new: nn.Module) -> nn.Module:
        return self.replace_at(self.site, new)

    @property
    def d_in(self) -> int:
        return self.site_module().in_features

    @property
    def d_out(self) -> int:
        return self.site_module().out_features
