"""kdflow: a reproducible knowledge-distillation pipeline (TensorFlow/Keras 3 + DVC).

Modules with one job each. ``params``, ``architectures``, ``paths``, ``errors``, ``io`` and
``runner`` do not import TensorFlow, so a typo in params.yaml is reported in well under a second.
"""

__version__ = "0.2.0"

import os as _os

# TensorFlow's Python-level INFO/WARNING logs off; must be set before TensorFlow is imported.
# (Its native start-up lines are captured by kdflow.runner.)
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
