"""What every stage shares: params, paths, atomic files and shards, the prepared data, the stage
runner, and the one error type for the user's input. No TensorFlow is imported here."""

import os as _os

# TensorFlow's native INFO and WARNING lines off unless KDFLOW_TF_LOGS=1; read when TensorFlow is
# first imported, which every stage does after importing this package.
if _os.environ.get("KDFLOW_TF_LOGS") != "1":
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class KdflowError(Exception):
    """An error caused by the user's input (params, data, artifacts): shown as one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type if it has none), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
