"""Estimators: what predicts Δ̂, the change in a test point's loss when training points are removed.

base.py (the interface and its Context), inverse_hessian.py (the seven inverse-Hessian methods),
registry.py (config name or "file.py:Class" → estimator)."""
