"""kdflow: a reproducible knowledge-distillation pipeline (TensorFlow/Keras 3 + DVC).

Modules with one job each; only ``models``, ``losses``, ``training``, ``evaluation``
and ``repro`` import TensorFlow, so parameter validation stays fast.
"""

__version__ = "0.1.0"

import os as _os

# Quieten TensorFlow's C++ start-up chatter; must happen before TensorFlow is first imported.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
