"""The compiler's user-facing error."""


class CompileError(ValueError):
    """A graph or placement the compiler cannot use, with what to fix (the CLI prints it)."""
