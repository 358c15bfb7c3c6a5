"""The proximal Bregman response (Bae et al., 2022): Δ_PBRF(z) = (ℓ(z_t; θ_PBRF,−z) − ℓ(z_t; θ*)) / s,
with θ_PBRF,−z the optimum of the proximal Bregman response objective of removing z with
ε = −s/n (engine/pbrf.py), for the points LOO re-trains. What influence functions estimate in a
non-convex net: the response of a proximal, linearised-in-output-space problem, not of
re-training; for s → 0 the Gauss-Newton influence estimate with the same damping. The LOO change
itself is scored against it too, as estimator `loo_retraining`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..study.grid import damping_for
from .base import Truth, changes


class Pbrf(Truth):
    name = "pbrf"
    label = "PBRF"
    title = "PBRF"
    objective = "pbrf"
    # solver: `train` runs the batched trainer for `steps` or `epochs` (default loo's) with loo's
    # optimiser settings under its own; `lbfgs` solves each copy to convergence (full batch, small nets)
    defaults = {"epsilon_scale": 1.0, "solver": "train", "lbfgs_iterations": 500, "tolerance": 1e-10}
    scored_inputs = {"loo_rows": "rows.parquet"}  # LOO always runs

    def check(self, settings: dict) -> None:
        if settings["solver"] not in ("train", "lbfgs"):
            raise ValueError(f"pbrf.solver must be train or lbfgs, got '{settings['solver']}'")

    def extra_params(self, block: dict, decay: float) -> dict:
        return {"damping": damping_for(block["influence"], decay)}  # λ_p = decay + damping

    def retrain_chunk(self, paths, part, settings, loo_cfg, train_cfg, out_path, log=print, **options) -> float:
        run = self.retrain(paths, [removed for _, removed in part], settings, loo_cfg, train_cfg, log=log, **options)
        scale = float(settings["epsilon_scale"])
        rows = [{"removed_index": int(i), "test_index": int(ti), "test_loss": float(run.measured[c, j]),
                 "param_distance": run.distances[c], "final_objective": run.final_objectives[c],
                 "gradient_norm": float(run.gradient_norms[c]), "iterations": run.iterations[c], "epsilon_scale": scale}
                for c, (i, _) in enumerate(part) for j, ti in enumerate(run.test_index)]
        run.write(rows, out_path)
        log(f"PBRF: largest gradient norm {max(run.gradient_norms):.3g}")  # NaN where not computed
        return run.seconds

    def score(self, scoring, table: pd.DataFrame) -> None:
        scale = float(table.epsilon_scale.iloc[0]) if len(table) else 1.0
        loo_rows = scoring.inputs.get("loo_rows")
        loo = pd.read_parquet(loo_rows) if loo_rows else None
        for tp in scoring.points:
            chosen = scoring.selection.get(tp["name"], {})
            truth = changes(table[table.removed_index >= 0], "removed_index", tp["index"], tp["loss"], scale)
            predictors = {name: t[t.test_point == tp["name"]].set_index("train_index").predicted_loss_change
                          for name, t in scoring.estimators.items()}
            if loo is not None:
                part = loo[(loo.test_point == tp["name"])].drop_duplicates("train_index").set_index("train_index")
                predictors["loo_retraining"] = part.actual_loss_change
            # a copy L-BFGS could not solve has NaN parameters: left out, so `n` counts the solved ones
            indices = [int(i) for i in chosen if int(i) in truth.index and np.isfinite(truth[int(i)])]
            labels = sorted({chosen[str(i)] for i in indices})
            for name, predictor in predictors.items():
                subsets = [("all", indices)] + ([(lab, [i for i in indices if chosen[str(i)] == lab]) for lab in labels]
                                                if len(labels) > 1 else [])
                for subset, part in subsets:
                    scoring.scored(name, self.name, subset, tp, predictor.reindex(part).to_numpy(),
                                   truth.reindex(part).to_numpy())
