"""Random stand-ins for the paper's models, built from each one's real architecture config: the same
architecture class, layer count (so the configured edit site exists), position/rotary settings,
norm epsilon, tied or untied head and dtype; only the width is shrunk and the vocabulary is the
tiny test tokenizer's. Saved as a plain Hugging Face folder, loaded through `model.path=` exactly
as a downloaded copy would be."""
from __future__ import annotations

from pathlib import Path

import torch

#: model config name -> (architecture fields of the real checkpoint's config.json, BOS convention)
ARCHITECTURES = {
    # Qwen/Qwen2.5-7B-Instruct: hidden 3584, MLP 18944, 28 heads / 4 KV heads, vocabulary 152,064
    "qwen25_7b": ({"model_type": "qwen2", "num_hidden_layers": 28, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
                   "max_position_embeddings": 32768, "tie_word_embeddings": False, "use_sliding_window": False,
                   "hidden_act": "silu"}, False),
    # meta-llama/Llama-3.1-8B-Instruct: hidden 4096, MLP 14336, 32 heads / 8 KV heads, vocabulary 128,256
    "llama31_8b": ({"model_type": "llama", "num_hidden_layers": 32, "rope_theta": 500_000.0, "rms_norm_eps": 1e-5,
                    "max_position_embeddings": 131072, "tie_word_embeddings": False, "hidden_act": "silu",
                    "attention_bias": False, "mlp_bias": False,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, True),
}
WIDTH = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


def save_random_model(name: str, folder: Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """A random `name`-architecture model and the tiny tokenizer, saved to `folder` in `dtype`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from editbench.data.zsre import PACKAGED_POOL
    from editbench.models.loading import _tiny_tokenizer

    arch, add_bos = ARCHITECTURES[name]
    tok = _tiny_tokenizer(PACKAGED_POOL, 2000, add_bos)
    fields = {k: v for k, v in arch.items() if k != "model_type"}
    conf = AutoConfig.for_model(arch["model_type"], vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **WIDTH, **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(conf).to(dtype)
    model.config.torch_dtype = dtype
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_parquet_records(folder: Path, n: int) -> Path:
    """The first `n` records of the packaged ZsRE pool, in reverse order (so a run shows which source
    it read), as a local parquet dataset: what `data.hub=` reads with `datasets.load_dataset`, as it
    would a hub id."""
    import json

    import datasets

    from editbench.data.zsre import PACKAGED_POOL

    rows = [json.loads(x) for x in Path(PACKAGED_POOL).read_text().splitlines()[:n]][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder
