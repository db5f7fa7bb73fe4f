"""The errors a user can act on, and the exit codes of the ``hecktor`` command.

A :class:`UserError` is something the user gave or has still to make: a file, a setting, the
output of an earlier stage. Commands report it in one line naming what is at fault. Any other
exception is a crash (a bug, or the machine failing), reported with its traceback under ``-v``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected exception
EXIT_BAD_INPUT = 2  # a UserError: bad input, bad config, a missing earlier step
EXIT_PATIENTS_FAILED = 3  # predict: the others were written, these patients were not


class UserError(ValueError):
    """Bad input or configuration, or an earlier step not yet run: one line, exit code 2."""
