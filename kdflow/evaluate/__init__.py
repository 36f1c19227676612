"""The `evaluate` stage's work: test metrics and paired statistics (metrics.py), the comparison of
the teacher and the three students with the teacher check (comparison.py), and the report (report.py)."""
