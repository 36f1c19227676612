"""kdflow: a reproducible knowledge-distillation pipeline (TensorFlow/Keras 3 + DVC).

Modules with one job each; docs/extending.md maps them to the stages that depend on them. The
params schema, the four extension points' registries (``sources``, ``architectures``,
``views``, ``losses``) and the tools (``search``, ``selection``, ``cli``) import no TensorFlow,
so a typo in params.yaml is reported in well under a second.
"""

__version__ = "0.3.0"

import os as _os

# TensorFlow's Python-level INFO/WARNING logs off; must be set before TensorFlow is imported.
# (Its native start-up lines are captured by kdflow.runner.)
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
