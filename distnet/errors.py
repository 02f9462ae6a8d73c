"""Errors a user can cause. Each carries a one-line message naming the thing and the fix (exit code 2)."""


class UserError(Exception):
    """Bad arguments, config or data: reported in one line, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """A dataset problem found when the dataset is opened."""


class ConfigError(UserError):
    """A bad config key, value or type."""
