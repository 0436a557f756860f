"""ROUGE-1/2/L and BLEU-4 between generated text and reference answers.

Both metrics are computed over words. ``jieba`` segments the text: Chinese
runs become words (as users of Chinese datasets expect — character overlap
would flatter the model), English and other space-separated text splits at
spaces and punctuation. Scoring is done by maintained libraries on those words:
``rouge-score`` for ROUGE F-measures and NLTK's sentence BLEU with smoothing
method 3 (the choice LLaMA-Factory makes, so numbers are comparable). Scores
are percentages averaged over examples, under LLaMA-Factory's key names.
"""

import logging
from collections.abc import Sequence
from functools import cache

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score.rouge_scorer import RougeScorer

ROUGE_TYPES = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL"}


@cache
def segmenter():
    """jieba, imported once and told not to log its dictionary loading on every run."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def words(text: str) -> list[str]:
    """The words of ``text``: jieba's segmentation without whitespace tokens."""
    return [word for word in segmenter().lcut(text) if word.strip()]


class PreSplitWords:
    """A rouge-score tokenizer for text that is already words joined by single spaces."""

    def tokenize(self, text: str) -> list[str]:
        return text.split(" ") if text else []


@cache
def rouge_scorer() -> RougeScorer:
    return RougeScorer(list(ROUGE_TYPES.values()), tokenizer=PreSplitWords())


def score_pair(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures and BLEU-4 of one prediction, in percent."""
    predicted, expected = words(prediction), words(reference)
    if not predicted or not expected:  # nothing to overlap: every score is zero
        return {name: 0.0 for name in [*ROUGE_TYPES, "bleu-4"]}
    rouge = rouge_scorer().score(" ".join(expected), " ".join(predicted))
    scores = {name: rouge[kind].fmeasure * 100 for name, kind in ROUGE_TYPES.items()}
    bleu = sentence_bleu([expected], predicted, smoothing_function=SmoothingFunction().method3)
    scores["bleu-4"] = bleu * 100
    return scores


def average_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean of ``score_pair`` over all pairs (rounded to 4 places), keyed rouge-1 ... bleu-4."""
    if not predictions:
        return {}
    totals: dict[str, float] = {}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, value in score_pair(prediction, reference).items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: round(total / len(predictions), 4) for name, total in totals.items()}
