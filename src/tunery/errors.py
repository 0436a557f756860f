"""Errors meant for people.

Every error a user can cause by what they wrote (a config key, a dataset file,
a model path) is a ``TuneryError``: one clear sentence that names the file, row
or key and says what to do. Front ends print the message and exit without a
traceback; anything else is a bug and keeps its traceback.
"""


class TuneryError(Exception):
    """A problem with the user's input, explained in one sentence."""


class ConfigError(TuneryError):
    """A config file or override is wrong (unknown key, bad value, bad combination)."""


class DataError(TuneryError):
    """A dataset is missing, malformed or empty."""


class ModelError(TuneryError):
    """A model or adapter cannot be found or loaded."""


class RewardError(TuneryError):
    """A reward function or reward model failed on a completion (raised, or returned a non-number)."""
