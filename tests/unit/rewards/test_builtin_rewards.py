"""The built-in reward functions on hand-written completions: what scores 1, what scores less."""

import pytest

from tunery.errors import ConfigError
from tunery.rewards.builtin import BUILTIN_REWARDS, last_number, list_items


def reward(name: str, argument: str | None = None):
    return BUILTIN_REWARDS.get(name)(argument)


def scores(name: str, completions: list[str], references: list[str] | None = None, argument=None):
    columns = {} if references is None else {"reference": references}
    return reward(name, argument)(["prompt"] * len(completions), completions, **columns)


def test_exact_match_compares_stripped_text():
    assert scores("exact_match", ["  Paris\n", "paris", "Paris."], ["Paris"] * 3) == [1.0, 0.0, 0.0]


def test_exact_match_ignores_unknown_columns():
    function = reward("exact_match")
    assert function(["p"], ["4"], reference=["4"], conversation=["{}"], difficulty=[3]) == [1.0]


def test_reference_rewards_refuse_a_row_without_reference():
    with pytest.raises(ValueError, match="has none"):
        scores("exact_match", ["x"], [""])
    with pytest.raises(ValueError, match="no 'reference' column"):
        scores("numeric_match", ["1"])


@pytest.mark.parametrize(("completion", "reference", "expected"), [
    ("The answer is 42.", "42", 1.0),
    ("So 1,000 apples.", "1000", 1.0),
    ("x = 1.0", "1", 1.0),
    ("first 7, finally -3.50", "#### -3.5", 1.0),
    ("It is 41.", "42", 0.0),
    ("42 at first, then 43", "42", 0.0),  # the LAST number counts
    ("no number at all", "42", 0.0),
    ("2.5e3", "2500", 1.0),
])
def test_numeric_match_takes_the_last_number(completion, reference, expected):
    assert scores("numeric_match", [completion], [reference]) == [expected]


def test_numeric_match_needs_a_number_in_the_reference():
    with pytest.raises(ValueError, match="holds no number"):
        scores("numeric_match", ["1"], ["none"])


def test_last_number_reads_separators_and_signs():
    assert last_number("pay $1,234.50 now") == last_number("1234.5")
    assert last_number("-7 and 8.") == 8
    assert last_number("nothing") is None


@pytest.mark.parametrize(("completion", "expected"), [
    ("<think>2 + 2 is 4</think><answer>4</answer>", 1.0),
    ("\n<think>\nmulti\nline\n</think>\n\n<answer>\n4\n</answer>\n", 1.0),
    ("<answer>4</answer>", 0.0),  # no thinking
    ("<think>x</think>", 0.0),  # no answer
    ("Sure! <think>x</think><answer>4</answer>", 0.0),  # text outside the blocks
    ("<think>x</think><answer>4</answer> done", 0.0),
    ("<think>x</think><answer>4</answer><answer>5</answer>", 0.0),  # two answers
    ("<think><think>x</think></think><answer>4</answer>", 0.0),  # nested blocks
])
def test_think_answer_format_is_a_full_match(completion, expected):
    assert scores("think_answer_format", [completion]) == [expected]


def test_regex_rewards_a_full_match_of_the_stripped_completion():
    assert scores("regex", [" 123 ", "123 apples", "abc"], argument=r"\d+") == [1.0, 0.0, 0.0]


def test_regex_without_or_with_a_broken_pattern_is_a_config_error():
    with pytest.raises(ConfigError, match="needs a pattern"):
        reward("regex")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        reward("regex", "(unclosed")


def test_length_penalty_grows_linearly_past_the_target():
    assert scores("length_penalty", ["a" * 150, "a" * 200, "a" * 300, "a" * 400]) == [0.0, 0.0, -0.5, -1.0]
    assert scores("length_penalty", ["a" * 10, "a" * 15], argument="10") == [0.0, -0.5]
    with pytest.raises(ConfigError, match="positive whole number"):
        reward("length_penalty", "ten")


def test_plain_rewards_take_no_argument():
    with pytest.raises(ConfigError, match="takes no argument"):
        reward("exact_match", "x")


def test_list_items_drops_bullets_numbers_blank_lines_and_repeats():
    items = list_items("- apple\n\n2. Banana\n* apple\n3) cherry  \n•  kiwi")
    assert items == ["apple", "banana", "cherry", "kiwi"]


@pytest.mark.parametrize(("completion", "expected"), [
    ("apple\nbanana\ncherry", 1.0),
    ("1. apple\n2. banana\n3. cherry", 1.0),
    ("Here are three fruits:\napple\nbanana\ncherry", pytest.approx(2 / 3)),  # a preamble is an extra item
    ("apple\nbanana", pytest.approx(2 / 3)),
    ("apple\napple\napple", pytest.approx(1 / 3)),  # repeats count once
    ("apple, banana, cherry", pytest.approx(1 / 3)),  # one line is one item
    ("", 0.0),
    ("a\nb\nc\nd\ne\nf\ng", 0.0),  # never below zero
])
def test_item_count_gives_partial_credit_for_near_misses(completion, expected):
    assert scores("item_count", [completion], ["3"]) == [expected]


def test_item_count_reads_n_from_an_example_answer():
    reference = "red\nblue\ngreen\nyellow"
    assert scores("item_count", ["a\nb\nc\nd", "a\nb"], [reference, reference]) == [1.0, 0.5]
