"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class InputError(ValueError):
    """Raised when a file, argument or value given by the user is unusable."""
