"""The one exception type for problems caused by the user's input."""


class KdflowError(Exception):
    """An error caused by the user's input (params, data, artifacts): shown as one line."""
