"""Distillation: the methods, their registry and the `distill` params (methods.py), and the
distilled students' objective that mixes them with the labels (objective.py). Only the `distill`
and `evaluate` stages import it."""
