"""Networks of the three tasks."""
