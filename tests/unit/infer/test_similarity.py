"""ROUGE and BLEU over words: values checked by hand, Chinese segmented into words."""

import pytest

from tunery.infer.similarity import average_scores, score_pair, words


def test_chinese_is_segmented_into_words_and_english_at_spaces_and_punctuation():
    assert words("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert words("Hello, world!") == ["Hello", ",", "world", "!"]


def test_identical_text_scores_one_hundred():
    scores = score_pair("the cat sat on the mat", "the cat sat on the mat")
    assert scores == pytest.approx({"rouge-1": 100, "rouge-2": 100, "rouge-l": 100, "bleu-4": 100})


def test_one_changed_word_gives_the_hand_computed_rouge():
    # 6 words each, 5 shared unigrams -> F1 5/6; bigrams: 3 of 5 shared -> 3/5;
    # the longest common subsequence is 5 words -> 5/6.
    scores = score_pair("the cat is on the mat", "the cat sat on the mat")
    assert scores["rouge-1"] == pytest.approx(500 / 6)
    assert scores["rouge-2"] == pytest.approx(60.0)
    assert scores["rouge-l"] == pytest.approx(500 / 6)
    assert 0 < scores["bleu-4"] < 100


def test_chinese_words_not_characters_are_compared():
    # by characters 我/爱 would match 2 of 4; by words 我/爱 match 2 of 3 (北京 vs 上海 differ)
    scores = score_pair("我爱北京", "我爱上海")
    assert scores["rouge-1"] == pytest.approx(200 / 3)


def test_empty_prediction_scores_zero_and_average_is_the_mean():
    assert score_pair("", "an answer") == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    average = average_scores(["five words are the same", ""], ["five words are the same", "an answer"])
    assert average["rouge-1"] == pytest.approx(50.0)
    assert average["bleu-4"] == pytest.approx(50.0)
