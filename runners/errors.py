"""The runner's user-facing error: the CLI prints its message as one line and exits 2."""


class InputError(ValueError):
    """Bad input from the command line or the file system that the user must fix."""
