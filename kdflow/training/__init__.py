"""Training, for the teacher and every student: the objective on the labels (objective.py), the
input pipeline (inputs.py), the one loop (loop.py), the paired students (students.py), where it runs
(strategy.py), per-epoch checkpoints (resume.py) and curves (curves.py)."""
