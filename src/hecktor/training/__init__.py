"""One training engine for all tasks; what differs per task lives in :mod:`hecktor.tasks`."""
