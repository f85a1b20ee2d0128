"""The training engine: configuration, the one epoch loop and its stepping strategies, the
distillation step, trials, and model I/O.

It sits between the entry scripts (``train_student.py``, ``train_teacher.py``, ``convert.py``,
``validation.py``, ``scripts/``) above it and the model zoo (:mod:`models`), the methods
(:mod:`distiller_zoo`) and the data (:mod:`dataset`) below it, which in turn stand on the
ground of small utilities in :mod:`helper`. Imports run downward only (README, "Layout").
"""
