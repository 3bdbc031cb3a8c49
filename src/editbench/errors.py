"""The one exception type that reaches the user as a single line."""


class EditbenchError(Exception):
    """Bad input or environment: the message names the problem and the fix, on one line."""
