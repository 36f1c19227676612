"""The `train_teacher` stage's work: the teacher trained on the labels (train.py), or the user's
imported (imported.py: loaded in any format, formats.py; checked that it is fed right, import_check.py)."""
