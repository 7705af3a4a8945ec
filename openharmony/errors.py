"""Errors a user can act on.

Every error raised for bad input (a flag, a config, a checkpoint, a prompt) derives from
`OpenHarmonyError`, so the CLI can print it as one line and exit non-zero, while genuine
bugs still surface as tracebacks.
"""


class OpenHarmonyError(Exception):
    """Base class of the errors caused by the user's input rather than by a bug."""


class ConfigError(OpenHarmonyError, ValueError):
    """A model config that is missing fields, has the wrong model type or is inconsistent."""


class CheckpointError(OpenHarmonyError):
    """A checkpoint that cannot be loaded as it is: missing, truncated, corrupt or mismatched."""


class DistributedError(OpenHarmonyError):
    """A distributed run that cannot go on: a rank died, left or cannot be reached."""
