"""The one exception type users see: a single line that names the problem and what to do."""


class SparsetrtError(Exception):
    """Bad input or an unmet precondition. The CLI prints it as one line and exits with code 2."""

    exit_code = 2


class EngineBuildError(SparsetrtError):
    """The TensorRT (RTX) parser or builder rejected a graph: the CLI prints the builder's own lines (node, op)
    and exits 1, as a failed check does; nothing is left at the output."""

    exit_code = 1
