"""The models: the `teacher` and `student` params (params.py), the architecture families and the
keras.applications backbones (families.py, applications.py), input conventions as layers
(input_range.py), a model's logits and temperature (logits.py), and models on disk (files.py, with
the Keras layers an imported teacher is made of, layers.py)."""
