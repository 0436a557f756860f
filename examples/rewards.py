"""Reward functions of your own, for `stage: grpo` and `stage: ppo`: a documented example file.

Name them in a config as ``file.py:function``; relative paths are read from the
directory you run ``tunery`` in (like ``dataset_dir``), so from the repository root:

    reward_funcs: item_count, examples/rewards.py:no_preamble
    reward_weights: 1.0, 0.5

Every reward function has this signature (TRL's)::

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float]

- ``prompts[i]``: the prompt that completion i answers (the text of its final user turn).
- ``completions[i]``: the text the policy wrote (special tokens removed).
- ``columns``: per-row lists, one value per completion: ``reference`` (the dataset's
  final assistant answer, "" when the row has none) and ``conversation`` (the
  prompt turns as JSON text: ``{"system", "tools", "messages": [{"role", "content"}]}``).
  Take the ones you need by name and keep ``**columns`` for the rest.
- Return one finite float per completion, in order. Raising, returning None, text,
  NaN or the wrong number of scores stops training with an error that names the
  function and quotes the prompt and completion it failed on.

The functions below go with the built-in ``rl_count_demo`` prompts ("List exactly
three fruits, one per line, with no other text.").
"""

import re

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
CHATTER = re.compile(r"^\s*(sure|certainly|of course|here (are|is)|okay|ok)\b", re.IGNORECASE)


def no_preamble(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """1.0 when the answer is only the list: no "Sure! Here are ..." opener and no line ending in ':'."""
    scores = []
    for completion in completions:
        lines = [line for line in completion.splitlines() if line.strip()]
        chatty = bool(lines) and (CHATTER.match(lines[0]) is not None or any(line.rstrip().endswith(":")
                                                                              for line in lines))
        scores.append(0.0 if chatty or not lines else 1.0)
    return scores


def count_from_prompt(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """1.0 when the number of non-empty lines equals the number the PROMPT asks for ("exactly three",
    "Name 4"), else 0.0: the same task as the built-in item_count, read from the prompt instead of
    the reference answer, and without partial credit."""
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        wanted = asked_count(prompt)
        lines = [line for line in completion.splitlines() if line.strip()]
        scores.append(float(len(lines) == wanted))
    return scores


def asked_count(prompt: str) -> int:
    """The first number in the prompt, as digits or an English word; ValueError when there is none
    (the run then stops and shows this prompt)."""
    for word in re.findall(r"[A-Za-z]+|\d+", prompt):
        if word.isdigit():
            return int(word)
        if word.lower() in NUMBER_WORDS:
            return NUMBER_WORDS[word.lower()]
    raise ValueError("the prompt asks for no number of items")
