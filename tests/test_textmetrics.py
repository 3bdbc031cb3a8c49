"""Free-text metrics (docs/protocol.md#free-text-metrics) on hand-computed cases; each name means one thing."""
from __future__ import annotations

import math

import pytest

from editbench import textmetrics as tm

HYP, REF = "the cat sat on the mat", "the cat is on the mat"


def test_horen_unigram_bleu_by_hand():
    assert tm.bleu1_horen(HYP, REF) == pytest.approx(5 / 6)  # the x2, cat, on, mat; equal lengths: no penalty
    assert tm.bleu1_horen("the cat", "the cat is here") == pytest.approx(math.exp(1 - 4 / 2))  # brevity penalty
    assert tm.bleu1_horen("the the the", "the cat") == pytest.approx(1 / 3)  # clipped; longer: no penalty
    assert tm.bleu1_horen("", REF) == 0.0 and tm.bleu1_horen(HYP, "") == 0.0


def test_rouge_recall_and_f1_by_hand():
    s = tm.rouge(HYP, REF)
    assert s["rouge1_r"] == pytest.approx(5 / 6) and s["rouge1_f"] == pytest.approx(5 / 6)
    # bigrams of the reference: the-cat cat-is is-on on-the the-mat; shared: the-cat on-the the-mat
    assert s["rouge2_r"] == pytest.approx(3 / 5) and s["rouge2_f"] == pytest.approx(3 / 5)
    assert s["rougeL_r"] == pytest.approx(5 / 6)  # LCS "the cat on the mat"
    short = tm.rouge("the cat", REF)  # recall 2/6, precision 1: F1 = 2 * (1/3) / (4/3) = 1/2
    assert short["rouge1_r"] == pytest.approx(1 / 3) and short["rouge1_f"] == pytest.approx(1 / 2)


def test_horen_rouge_is_set_based_case_and_punctuation_sensitive_by_hand():
    # `rouge` 1.0.1 recall: distinct reference n-grams that the hypothesis holds, words split on spaces only
    s = tm.rouge_horen("the cat sat on the mat", "the cat sat on a mat too")
    assert s["rouge1_r_horen"] == pytest.approx(5 / 7)  # reference words {the cat sat on a mat too}; a, too missing
    assert s["rouge2_r_horen"] == pytest.approx(3 / 6)  # the-cat cat-sat sat-on of 6 reference bigrams
    # "The" is not "the" and "cat," is not "cat": 1 of the 5 distinct reference words; rouge-score finds 3 of 6
    assert tm.rouge_horen("The cat, sat", "the cat sat on the mat")["rouge1_r_horen"] == pytest.approx(1 / 5)
    assert tm.rouge("The cat, sat", "the cat sat on the mat")["rouge1_r"] == pytest.approx(3 / 6)
    # a hypothesis with no space gets one (as the HoReN code does), so an empty one scores 0 instead of raising
    assert tm.rouge_horen("", REF) == {"rouge1_r_horen": 0.0, "rouge2_r_horen": 0.0, "rougeL_r_horen": 0.0}
    assert tm.rouge_horen("mat", REF)["rouge1_r_horen"] == pytest.approx(1 / 5)


def test_sacrebleu_sentence_bleu():
    import sacrebleu

    assert tm.sacrebleu_sentence(REF, REF) == pytest.approx(1.0)
    assert tm.sacrebleu_sentence("dogs bark loudly", REF) == pytest.approx(0.0, abs=1e-9)
    assert tm.sacrebleu_sentence(HYP, REF) == pytest.approx(sacrebleu.sentence_bleu(HYP, [REF]).score / 100)
    assert tm.sacrebleu_sentence(HYP, REF) != pytest.approx(tm.bleu1_horen(HYP, REF))  # two metrics, two names


def test_embedding_metrics_are_distinct_and_sane():
    cos = tm.minilm_cosine([REF, HYP, "Quantum chromodynamics binds quarks."], [REF, REF, REF])
    assert cos[0] == pytest.approx(1.0, abs=1e-5) and 0.5 < cos[1] < 1.0 and cos[2] < cos[1]
    f = tm.bertscore_f([REF, HYP], [REF, REF])
    assert f[0] == pytest.approx(1.0, abs=1e-5) and f[1] < 1.0 and f[1] != pytest.approx(cos[1])
    rows = tm.score_pairs([HYP], [REF])
    assert set(rows[0]) == {"sacrebleu", "bleu1_horen", "rouge1_r", "rouge2_r", "rougeL_r", "rouge1_f", "rouge2_f",
                            "rougeL_f", "rouge1_r_horen", "rouge2_r_horen", "rougeL_r_horen", "minilm_cosine",
                            "bertscore_f"}
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        tm.score_pairs([HYP], [REF, REF])
