"""Ground truths: each a plan of removal sets over one re-training function (retrain.py) and a scorer (base.py, registry.py)."""
