"""The one exception type for mistakes a user can fix (bad input, bad flags, stale outputs).

The CLI prints these as a single line on stderr and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class MixlabError(Exception):
    """A problem with the user's input or configuration, worded so they can fix it."""


class ConfigError(MixlabError, ValueError):
    """An invalid configuration value or key."""


class InputError(MixlabError, ValueError):
    """Input data that breaks a contract (missing column, corrupt file, duplicate ids...)."""
