"""The one exception type the engine raises for bad input."""


class SynBTError(Exception):
    """A problem with the user's input or data, reported as one clear line (no traceback at the CLI)."""
