"""kdflow: a reproducible knowledge-distillation pipeline (TensorFlow/Keras 3 + DVC).

The sub-packages follow the pipeline (README.md, "Layout"): ``data`` (prepare), ``teacher``,
``views`` (the views and the teacher's cached outputs), ``distill``, ``training``, ``evaluate``,
``export``; ``models`` and ``core`` serve every stage; ``search`` and ``cli`` are tools.

This file holds the version only: no stage lists it as a dependency (a test checks that it runs
nothing), so a version bump reruns nothing.
"""

__version__ = "0.4.0"
