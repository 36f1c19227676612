"""The `export` stage's work: the distilled student in the forms people ship (forms.py)."""
