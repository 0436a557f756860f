"""The built-in reward functions, by name (``reward_funcs: exact_match, think_answer_format``).

Every reward function has TRL's shape::

    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]

one float per completion. ``columns`` holds per-row lists from the dataset; the
built-ins read ``reference``, the dataset's final assistant answer ("" when a
row has none). A built-in that needs a reference raises on a row without one:
``RewardSet`` reports that with the row's prompt rather than training on zeros.

Two built-ins take one argument after a colon: ``regex:PATTERN`` and
``length_penalty:CHARS``. Everything else is looked up as written.
"""

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from tunery.errors import ConfigError
from tunery.registry import Registry

RewardFunction = Callable[..., list[float]]
Factory = Callable[[str | None], RewardFunction]  # the text after "name:" (None without a colon)

BUILTIN_REWARDS: Registry[Factory] = Registry("reward function")

DEFAULT_TARGET_CHARS = 200  # length_penalty's target when no argument is given


def plain(name: str) -> Callable[[RewardFunction], RewardFunction]:
    """Register a reward function that takes no argument."""

    def store(function: RewardFunction) -> RewardFunction:
        def factory(argument: str | None) -> RewardFunction:
            if argument is not None:
                raise ConfigError(f"reward_funcs: the built-in reward '{name}' takes no argument "
                                  f"(got '{name}:{argument}'); write just '{name}'.")
            return function

        BUILTIN_REWARDS.add(name, factory)
        return function

    return store


def references_of(columns: dict, count: int, name: str) -> Sequence[str]:
    references = columns.get("reference")
    if references is None:
        raise ValueError(f"{name} compares with the dataset's answer, but no 'reference' column was given")
    if len(references) != count:
        raise ValueError(f"{name} got {len(references)} references for {count} completions")
    return references


def require_reference(reference: str, name: str) -> str:
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"{name} needs the row's reference answer (the dataset's final assistant "
                         "answer), but this row has none")
    return reference


# ----- answer checks ------------------------------------------------------------------------------------


@plain("exact_match")
def exact_match(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, equals the stripped reference."""
    references = references_of(columns, len(completions), "exact_match")
    return [float(completion.strip() == require_reference(reference, "exact_match").strip())
            for completion, reference in zip(completions, references, strict=True)]


NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def last_number(text: str) -> Decimal | None:
    """The last number written in ``text`` ("1,234.50" -> 1234.50), or None."""
    for match in reversed(NUMBER.findall(text)):
        try:
            return Decimal(match.replace(",", "").rstrip("."))
        except InvalidOperation:  # "1,2,,": not a number after all; try the one before
            continue
    return None


@plain("numeric_match")
def numeric_match(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """1.0 when the last number in the completion equals the last number in the reference.

    Thousands separators and trailing zeros do not matter ("1,000" = "1000", "1.0" = "1"), so a
    reference such as GSM8K's "... #### 42" works as it is.
    """
    references = references_of(columns, len(completions), "numeric_match")
    scores = []
    for completion, reference in zip(completions, references, strict=True):
        expected = last_number(require_reference(reference, "numeric_match"))
        if expected is None:
            raise ValueError(f"numeric_match: the reference {reference[:80]!r} holds no number")
        answer = last_number(completion)
        scores.append(float(answer is not None and answer == expected))
    return scores


# ----- format checks ------------------------------------------------------------------------------------

NOT_A_TAG = r"(?:(?!</?(?:think|answer)>).)*"  # text that opens or closes no think/answer block
THINK_ANSWER = re.compile(rf"\s*<think>{NOT_A_TAG}</think>\s*<answer>{NOT_A_TAG}</answer>\s*", re.DOTALL)


@plain("think_answer_format")
def think_answer_format(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """1.0 when the whole completion is ``<think>...</think>`` then ``<answer>...</answer>``
    (whitespace around and between the blocks allowed, nothing else), else 0.0."""
    return [float(THINK_ANSWER.fullmatch(completion) is not None) for completion in completions]


def regex_factory(pattern: str | None) -> RewardFunction:
    """``regex:PATTERN``: 1.0 when the stripped completion matches PATTERN in full (re.DOTALL)."""
    if not pattern:
        raise ConfigError("reward_funcs: 'regex' needs a pattern after a colon, e.g. 'regex:\\d+'.")
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ConfigError(f"reward_funcs: 'regex:{pattern}' is not a valid regular expression "
                          f"({err}).") from None

    def regex_format(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [float(compiled.fullmatch(completion.strip()) is not None) for completion in completions]

    return regex_format


BUILTIN_REWARDS.add("regex", regex_factory)


def length_penalty_factory(target: str | None) -> RewardFunction:
    """``length_penalty[:CHARS]``: ``-max(0, len(completion) - CHARS) / CHARS``.

    0 up to CHARS characters (default 200), then -1 for every further CHARS characters: a
    completion twice the target scores -1. Combine it with a small weight.
    """
    chars = DEFAULT_TARGET_CHARS if target is None else parse_positive_int(target, "length_penalty")

    def length_penalty(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [-max(0, len(completion) - chars) / chars for completion in completions]

    return length_penalty


def parse_positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"reward_funcs: '{name}:{text}' needs a positive whole number of characters, "
                          f"e.g. '{name}:300'.")
    return value


BUILTIN_REWARDS.add("length_penalty", length_penalty_factory)


# ----- counting items (the rl_count_demo prompt set) ------------------------------------------------------

BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def list_items(text: str) -> list[str]:
    """The distinct non-empty lines of ``text``, bullets and numbering removed, case folded."""
    items: list[str] = []
    for line in text.splitlines():
        item = BULLET.sub("", line).strip().casefold()
        if item and item not in items:
            items.append(item)
    return items


def wanted_count(reference: str) -> int:
    """N: the reference itself when it is a whole number, else the number of items it lists."""
    text = require_reference(reference, "item_count").strip()
    return int(text) if text.isdigit() else len(list_items(text))


@plain("item_count")
def item_count(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """How well the completion lists exactly N items, one per line: ``max(0, 1 - |count - N| / N)``.

    ``count`` is the number of distinct non-empty lines (bullets and numbering removed, so a
    preamble line such as "Here are three fruits:" counts as an extra item and repeats count
    once); N comes from the reference (a whole number, or an example answer whose items are
    counted). Exactly N items scores 1, one off scores ``1 - 1/N``: near misses still teach.
    """
    references = references_of(columns, len(completions), "item_count")
    scores = []
    for completion, reference in zip(completions, references, strict=True):
        wanted = wanted_count(reference)
        if wanted <= 0:
            raise ValueError(f"item_count: the reference {reference[:80]!r} asks for no items")
        scores.append(max(0.0, 1.0 - abs(len(list_items(completion)) - wanted) / wanted))
    return scores

