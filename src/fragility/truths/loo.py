"""Leave-one-out: Δ(z) = ℓ(z_t; θ₋z) − ℓ(z_t; θ*), re-trained from θ* without z, for the selected
points; with the no-removal drift control (the same re-training removing nothing: how far
re-training moves θ* by itself) and repeats with another minibatch order (the noise of one
re-training). Scored per cell by study/correlate.py (rows.parquet, correlations.parquet)."""

from __future__ import annotations

import math
from pathlib import Path

from .base import Truth


class LeaveOneOut(Truth):
    name = "loo"
    label = "LOO"
    title = "leave-one-out"
    inputs = {"selected": "selected.json", "drift_theta": "loo/drift_theta.pt"}
    score = None  # study/correlate.py: rule correlate

    def settings(self, block: dict) -> dict:
        return dict(block["loo"])

    def chunk_size(self, block: dict) -> int:
        return int(block["loo"]["chunk_size"])

    def folder(self) -> str:
        return "loo"

    def rows(self, removed_index: list[int], run, drift_theta=None) -> list[dict]:
        """Per copy and tracked test point: the loss, ‖θ₋z − θ*‖ and, given the drift control's
        parameters, ‖θ₋z − θ_drift‖ (else NaN)."""
        out = []
        for c, i in enumerate(removed_index):
            to_drift = float((run.thetas[c] - drift_theta).norm()) if drift_theta is not None else math.nan
            out += [{"removed_index": int(i), "test_index": int(ti), "test_loss": float(run.measured[c, j]),
                     "param_distance": run.distances[c], "param_distance_vs_drift": to_drift,
                     "final_objective": run.final_objectives[c]} for j, ti in enumerate(run.test_index)]
        return out

    def retrain_chunk(self, paths, part, settings, loo_cfg, train_cfg, out_path, **options) -> float:
        from ..io import load_torch

        run = self.retrain(paths, [removed for _, removed in part], loo_cfg, loo_cfg, train_cfg, **options)
        drift_theta = None
        if paths.get("drift_theta"):
            drift = load_torch(paths["drift_theta"], required_keys=("theta",))["theta"]
            drift_theta = drift.to(device=run.thetas.device, dtype=run.thetas.dtype)[0]
        run.write(self.rows([i for i, _ in part], run, drift_theta), out_path)
        return run.seconds

    def drift(self, paths: dict, loo_cfg: dict, train_cfg: dict, table_out, theta_out, **options) -> float:
        """The drift control: the same re-training removing nothing (removed_index −1); saves its
        parameters and buffers to `theta_out`."""
        from ..io import save_torch

        run = self.retrain(paths, [[]], loo_cfg, loo_cfg, train_cfg, **options)
        save_torch({"theta": run.thetas.cpu(), "removed": [-1],
                    "buffers": {name: b.cpu() for name, b in (run.buffers or {}).items()}}, theta_out)
        run.write(self.rows([-1], run), table_out)
        return run.seconds

    def repeat(self, paths: dict, count: int, loo_cfg: dict, train_cfg: dict, out_path, order_seed: int = 0,
               checkpoint_prefix=None, **options):
        """Re-train the first `count` selected points (in the order of `selected.json`'s indices)
        and a no-removal drift control with minibatch order `order_seed`: one table like a chunk's,
        the drift row with removed_index −1, distances to this repeat's own drift control."""
        import pandas as pd

        from ..io import write_parquet
        from ..study.grid import read_selected

        indices = read_selected(paths["selected"])[: int(count)]
        checkpoint = (lambda part: f"{checkpoint_prefix}.{part}.pt") if checkpoint_prefix else (lambda part: None)
        drift = self.retrain(paths, [[]], loo_cfg, loo_cfg, train_cfg, order_seed=order_seed,
                             checkpoint_path=checkpoint("drift"), **options)
        rows, seconds, runs = self.rows([-1], drift), drift.seconds, [drift]
        if indices:
            removals = self.retrain(paths, [[i] for i in indices], loo_cfg, loo_cfg, train_cfg, order_seed=order_seed,
                                    checkpoint_path=checkpoint("removals"), **options)
            rows += self.rows(indices, removals, drift.thetas[0])
            seconds += removals.seconds
            runs.append(removals)
        write_parquet(pd.DataFrame(rows).assign(order_seed=int(order_seed)), out_path)
        for run in runs:
            for ckpt in run.checkpoints:
                if ckpt and Path(ckpt).exists():
                    Path(ckpt).unlink()
        return seconds, indices
