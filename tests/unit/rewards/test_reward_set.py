"""load_rewards / RewardSet: built-ins and user files combined with weights; every failure named."""

import math
import textwrap

import pytest
import torch

from tunery.config.rl import RLArgs
from tunery.errors import ConfigError, RewardError
from tunery.rewards import RewardScores, load_rewards

PROMPTS = ["List exactly two fruits.", "What is 6 times 7?"]
COMPLETIONS = ["apple\nbanana", "It is 42."]
COLUMNS = {"reference": ["pear\nplum", "42"]}

USER_FILE = '''
def shout(prompts, completions, **columns):
    """1 per exclamation mark."""
    return [float(c.count("!")) for c in completions]

def uses_columns(prompts, completions, reference, **kwargs):
    return [float(len(r)) for r in reference]

def broken(prompts, completions, **columns):
    return [1.0 / len(c) for c in completions]  # ZeroDivisionError on an empty completion

def short(prompts, completions, **columns):
    return [1.0]

def not_numbers(prompts, completions, **columns):
    return [None if "!" in c else 1.0 for c in completions]

def nan(prompts, completions, **columns):
    return [float("nan")] * len(completions)

def text(prompts, completions, **columns):
    return ["1"] * len(completions)

def as_tensor(prompts, completions, **columns):
    import torch
    return torch.ones(len(completions))

def whole(prompts, completions, **columns):
    return 0.5

WEIGHT = 3
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_FILE))
    return path


def rewards(funcs, weights=None, base_dir=None):
    return load_rewards(RLArgs(reward_funcs=funcs, reward_weights=weights), base_dir)


def test_weighted_sum_and_per_function_scores():
    reward_set = rewards("exact_match, item_count, length_penalty:5", "2, 0.5, 1")
    assert reward_set.names == ["exact_match", "item_count", "length_penalty"]
    assert reward_set.weights == [2.0, 0.5, 1.0]
    result = reward_set.score(PROMPTS, COMPLETIONS, {"reference": ["apple\nbanana", "a\nb"]})
    assert isinstance(result, RewardScores) and result.total.dtype == torch.float32
    assert result.per_function["exact_match"].tolist() == [1.0, 0.0]
    assert result.per_function["item_count"].tolist() == [1.0, 0.5]
    penalty = [-(12 - 5) / 5, -(9 - 5) / 5]
    assert result.per_function["length_penalty"].tolist() == pytest.approx(penalty)
    expected = [2 * 1 + 0.5 * 1 + penalty[0], 2 * 0 + 0.5 * 0.5 + penalty[1]]
    assert result.total.tolist() == pytest.approx(expected)


def test_weights_default_to_one_and_repeated_names_get_a_suffix():
    reward_set = rewards(["regex:\\d+", "regex:[a-z\\n]+"])
    assert reward_set.names == ["regex", "regex_2"] and reward_set.weights == [1.0, 1.0]
    result = reward_set.score(PROMPTS, ["42", "apple\nbanana"], COLUMNS)
    assert result.total.tolist() == [1.0, 1.0]
    assert result.per_function["regex"].tolist() == [1.0, 0.0]


def test_weights_must_match_the_functions():
    with pytest.raises(ConfigError, match="reward_weights has 1 values but reward_funcs names 2"):
        rewards("exact_match, item_count", "1")
    with pytest.raises(ConfigError, match="finite"):
        rewards("exact_match", [math.inf])
    with pytest.raises(ConfigError, match="No reward_funcs"):
        rewards(None)


def test_unknown_builtin_suggests_the_name():
    with pytest.raises(ConfigError, match=r"Did you mean 'exact_match'.*file\.py:function"):
        rewards("exact_mach")


def test_user_functions_load_from_a_file_relative_to_base_dir(user_file, tmp_path):
    reward_set = rewards(f"{user_file.name}:shout, my_rewards.py:uses_columns, my_rewards.py:uses_columns",
                         "1, 1, 2", base_dir=tmp_path)
    assert reward_set.names == ["shout", "uses_columns", "uses_columns_2"]
    result = reward_set.score(PROMPTS, ["hi!!", "ok"], COLUMNS)
    assert result.per_function["shout"].tolist() == [2.0, 0.0]
    assert result.per_function["uses_columns"].tolist() == [9.0, 2.0]
    assert result.total.tolist() == [2.0 + 9.0 + 18.0, 0.0 + 2.0 + 4.0]


def test_relative_user_files_are_read_from_the_working_directory(user_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rewards("my_rewards.py:shout").score(["p"], ["!"]).total.tolist() == [1.0]
    absolute = rewards(f"{user_file}:as_tensor", base_dir=tmp_path / "elsewhere")
    assert absolute.score(PROMPTS, COMPLETIONS).total.tolist() == [1.0, 1.0]


def test_user_file_errors_name_the_file_and_function(user_file, tmp_path):
    with pytest.raises(ConfigError, match=r"'missing.py' does not exist .*relative paths are read from"):
        rewards("missing.py:shout", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"has no function 'shuot'.*It defines: .*shout"):
        rewards("my_rewards.py:shuot", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"'WEIGHT' in .* not a function \(its type is int"):
        rewards("my_rewards.py:WEIGHT", base_dir=tmp_path)
    (tmp_path / "bad.py").write_text("import no_such_module_here\n")
    with pytest.raises(ConfigError, match=r"importing .*bad\.py.*ModuleNotFoundError"):
        rewards("bad.py:anything", base_dir=tmp_path)


def test_a_raising_function_is_reported_with_the_row_that_failed(user_file, tmp_path):
    reward_set = rewards("my_rewards.py:broken", base_dir=tmp_path)
    with pytest.raises(RewardError) as caught:
        reward_set.score(["first prompt", "the prompt " + "x" * 500], ["ok", ""], {"reference": ["", ""]})
    message = str(caught.value)
    assert "Reward function 'broken' raised ZeroDivisionError" in message
    assert "prompt 'the prompt xxx" in message and "completion ''" in message
    assert "first prompt" not in message and "x" * 201 not in message  # the failing row, truncated
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_a_builtin_failing_on_a_row_names_it():
    with pytest.raises(RewardError, match=r"'exact_match' raised ValueError.*has none.*prompt 'b'"):
        rewards("exact_match").score(["a", "b"], ["x", "y"], {"reference": ["x", ""]})


@pytest.mark.parametrize(("name", "phrase"), [
    ("short", "returned 1 scores for 2 completions"),
    ("not_numbers", r"returned None \(not a finite number\) for prompt 'List exactly two fruits.', "
                    r"completion 'hi!'"),
    ("nan", r"returned nan \(not a finite number\)"),
    ("text", r"returned '1' \(not a finite number\)"),
    ("whole", "returned a float; it must return a list of 2 numbers"),
])
def test_bad_return_values_are_reward_errors(user_file, tmp_path, name, phrase):
    reward_set = rewards(f"my_rewards.py:{name}", base_dir=tmp_path)
    with pytest.raises(RewardError, match=phrase):
        reward_set.score(PROMPTS, ["hi!", "ok"], COLUMNS)


def test_columns_must_hold_one_value_per_completion():
    with pytest.raises(ValueError, match=r"one value per completion \(4\).*'prompts': 2, 'reference': 2"):
        rewards("exact_match").score(PROMPTS, COMPLETIONS * 2, COLUMNS)


def test_the_example_reward_file_works_on_the_demo_prompts(monkeypatch):
    from train_tiny import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)  # its documented use: run from the repository root
    reward_set = rewards("item_count, examples/rewards.py:no_preamble, examples/rewards.py:count_from_prompt",
                         "1, 0.5, 1")
    prompts = ["List exactly three fruits, one per line, with no other text.", "Name 2 birds."]
    completions = ["Here are three fruits:\napple\npear\nplum", "owl\neagle"]
    result = reward_set.score(prompts, completions, {"reference": ["a\nb\nc", "a\nb"]})
    assert result.per_function["no_preamble"].tolist() == [0.0, 1.0]
    assert result.per_function["count_from_prompt"].tolist() == [0.0, 1.0]
    assert result.total.tolist() == pytest.approx([2 / 3, 2.5])
    with pytest.raises(RewardError, match=r"'count_from_prompt' raised ValueError.*prompt 'Say hi'"):
        reward_set.score(["Say hi"], ["hi"], {"reference": ["x"]})
