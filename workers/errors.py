"""Errors a user can fix: the CLI prints them as one line and exits with `exit_code`.

Every module raises a subclass of `UserError` for bad input (a missing dataset, an unknown
arch, a malformed sweep, ...). The message must say what is wrong *and* how to fix it.
"""


class UserError(Exception):
    """Bad input; shown to the user as a single line, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """The dataset is missing, corrupt, tampered with or in an unknown layout."""


class ConfigError(UserError):
    """An unknown name (arch, transform, preset, ...) or a malformed config or sweep."""


class DiskFullError(UserError):
    """No room to write: a full file system (ENOSPC) or a spent quota (EDQUOT) under the
    results root, the checkpoint folder or a temporary / Ray folder. Not bad input, but like it
    no retry can succeed until someone frees space: the run stops at once with one line naming
    the folder and its free space (exit code 2); `symsweep resume` continues afterwards."""


class DeviceError(RuntimeError):
    """A trial (or kernel tile) granted GPUs whose JAX has none, or fewer (workers.devices):
    a node's fault, not the config's, so not a UserError; a retry may land on a sound node.
    The message names what JAX saw and how to check the node."""


class TrialInterrupted(Exception):  # noqa: N818 - the field's word for what happened
    """Not an error: the sweep was asked to stop (orchestrator/stopping.py) while this attempt
    ran. Raised between kernel tiles or at a report; the attempt is recorded as
    ``interrupted``, its computed tiles and last checkpoint kept for the next attempt."""
