"""User-facing errors. The CLI maps them to exit codes and one-line messages."""


class FveditError(Exception):
    """A runtime failure the user should read about (exit code 1)."""

    exit_code = 1


class InputError(FveditError):
    """Bad input or arguments: a missing/corrupt file, no face, a mismatched checkpoint (exit code 2)."""

    exit_code = 2
