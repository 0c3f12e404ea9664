"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class BenchError(Exception):
    """A mistake the user can fix: the message says what is wrong and how to fix it, in one line."""
