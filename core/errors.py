"""User-facing errors: one clear message naming where the problem is, no traceback."""


class PlmforgeError(Exception):
    """An error caused by user input (spec, data file, plugin) rather than a bug.

    The CLI prints ``str(error)`` and exits non-zero; ``--debug`` shows the traceback.
    """


class SpecError(PlmforgeError):
    """A spec file that cannot be read or does not validate."""


class DataError(PlmforgeError):
    """A data file that is missing or malformed."""


class PluginError(PlmforgeError):
    """A plugin that is unknown, disabled, duplicated or fails to load."""


class CheckpointError(PlmforgeError):
    """A checkpoint that is missing, incomplete or does not match the run."""


class ObjectiveFailed(PlmforgeError):
    """A plugin objective raised while the run called it; names the objective, its plugin and the call."""


class TrainingDiverged(PlmforgeError):
    """The loss or gradient norm stopped being finite; the run stops without saving those weights."""
