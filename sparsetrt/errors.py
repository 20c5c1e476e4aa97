"""The one exception type users see: a single line that names the problem and what to do."""


class SparsetrtError(Exception):
    """Bad input or an unmet precondition. The CLI prints it as one line and exits with code 2."""
