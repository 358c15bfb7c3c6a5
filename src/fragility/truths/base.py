"""A ground truth: which removal sets a cell re-trains (its plan), how each chunk of them is
re-trained (truths/retrain.py: one function for all) and written, and how an estimator's Δ̂ is
scored against what was measured.

Every estimator's Δ̂(i) = +(1/n) ∇ℓ(z_t)ᵀ(H + δI)⁻¹∇ℓ(z_i) predicts the change in test loss when
z_i is removed; a truth measures a change Δ by re-training without some set U and scores Σ_{i∈U} Δ̂(i)
(or a rescaling of it) against Δ. Adding a truth is a subclass in its own module, one line in
truths/registry.py and its block in the config schema.

This module is torch-free (the DAG is built from it); the re-training imports torch in the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..stats import correlate, stream_seed, without_values
from ..study import grid


class Truth:
    """One ground truth. Class attributes: `name` (the config's `truths` entry and the rule
    `<name>_chunk`), `defaults` of its config block, `label` and `title` (tables, figures),
    `planned` (its sets are drawn into `truths/plan.json` from the `select.by` estimator's Δ̂, or
    every estimator's under `union`), `draw_keys` (the settings the draw reads), `removal_weight`
    (the weight a removed row keeps), `objective` (training or pbrf), `inputs` (cell files its
    chunk jobs read besides the model, data and test points), `scored_inputs` (cell files its
    scorer reads besides its chunks)."""

    name = ""
    defaults: dict = {}
    label = ""
    title = ""
    planned = False
    mean_over_points = False  # its headline row is test point `mean` (a Spearman over all of them)
    draw_keys: tuple = ()
    removal_weight = 0.0
    objective = "training"
    inputs: dict = {"selected": "selected.json"}
    scored_inputs: dict = {}

    # ------------------------------------------------------------------ settings
    def settings(self, block: dict) -> dict:
        """The truth's block of a cell's merged config over its defaults (checked by `check`)."""
        merged = {**self.defaults, **block.get(self.name, {})}
        if len(grid.length_keys(merged)) > 1:
            raise ValueError(f"{self.name}: set at most one of {self.name}.steps and {self.name}.epochs (neither: "
                             "loo's length; null unsets one)")
        self.check(merged)
        return merged

    def check(self, settings: dict) -> None:
        """ValueError naming the key for a value the schema cannot rule out."""

    def chunk_size(self, block: dict) -> int:
        """Copies per re-training job (the truth's `chunk_size`, default loo.chunk_size)."""
        return int(self.settings(block).get("chunk_size", block["loo"]["chunk_size"]))

    def extra_params(self, block: dict, decay: float) -> dict:
        """Keyword arguments of `retrain_chunk` that come from outside the truth's block."""
        return {}

    def folder(self) -> str:
        """The chunk tables' folder, relative to the cell."""
        return f"truths/{self.name}"

    # ------------------------------------------------------------------ plan
    def draw(self, influence: dict, labels: np.ndarray, settings: dict, rng: np.random.Generator):
        """A planned truth's entry of `truths/plan.json` (sets drawn with `rng`); `influence`:
        estimator → table (the `select.by` estimator's, or every one's under `union`)."""
        raise NotImplementedError(f"truth '{self.name}' draws no plan")

    def sets(self, inputs: dict, settings: dict) -> list[tuple[int, list[int]]]:
        """(id, removed training indices) of every re-training, in order; `inputs` are the parsed
        files of `inputs` (selected.json, plan.json)."""
        return [(int(i), [int(i)]) for i in inputs["selected"]["indices"]]

    # ------------------------------------------------------------------ re-training
    def retrain_chunk(self, paths: dict, part: list[tuple[int, list[int]]], settings: dict, loo_cfg: dict,
                      train_cfg: dict, out_path, **options) -> float:
        """Re-train one chunk (`part` of `sets`) and write its table: per copy and tracked test
        point `set_id`, `removed_count`, `test_index`, `test_loss`, `param_distance`,
        `final_objective`. Returns the training's seconds."""
        run = self.retrain(paths, [removed for _, removed in part], settings, loo_cfg, train_cfg, **options)
        rows = [{"set_id": int(set_id), "removed_count": len(removed), "test_index": int(ti),
                 "test_loss": float(run.measured[c, j]), "param_distance": run.distances[c],
                 "final_objective": run.final_objectives[c]}
                for c, (set_id, removed) in enumerate(part) for j, ti in enumerate(run.test_index)]
        run.write(rows, out_path)
        return run.seconds

    def retrain(self, paths: dict, removed: list[list[int]], settings: dict, loo_cfg: dict, train_cfg: dict, **options):
        """truths/retrain.py's `retrain` with this truth's objective and removal weight."""
        from .retrain import retrain

        return retrain(paths["model"], paths["data"], paths["test_points"], removed, train_cfg, loo_cfg, settings,
                       truth=self.name, removal_weight=self.removal_weight, objective=self.objective, **options)

    # ------------------------------------------------------------------ scores
    def score(self, scoring: "Scoring", table: pd.DataFrame) -> None:
        """Add this truth's correlation rows to `scoring` from its chunk tables (`table`)."""
        raise NotImplementedError(f"truth '{self.name}' has no scorer")


def changes(table: pd.DataFrame, key: str, test_index: int, loss_at_optimum: float, scale: float = 1.0) -> pd.Series:
    """(ℓ(z_t; θ_re-trained) − ℓ(z_t; θ*)) / scale at one test point, indexed by `key`."""
    part = table[table.test_index == test_index]
    return ((part.test_loss - loss_at_optimum) / scale).set_axis(part[key].to_numpy())


@dataclass
class Scoring:
    """What a truth's scorer reads of one cell, and the rows it adds: the cell, its test points,
    each estimator's influence table, the model's flags and metrics, the plan, the selection
    (test point → {training index: rule label}), the parsed `scored_inputs` and the options."""

    cell: dict
    points: list
    estimators: dict
    metrics: dict
    plan: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    @property
    def model_flags(self) -> list[str]:
        return [f"model_not_trained:{f}" for f in self.metrics.get("flags", [])]

    def row(self, tp: dict, estimator: str, truth: str, subset: str, stats_: dict) -> None:
        """Add one correlation row (values dropped when the model is flagged as not trained)."""
        flags = self.model_flags
        flag = ";".join(filter(None, flags + [stats_["flag"]]))
        if flags:
            stats_ = without_values(stats_)
        self.rows.append({**self.cell, "test_point": tp["name"], "test_index": tp["index"], "test_loss": tp["loss"],
                          "estimator": estimator, "quantity": "loss_change", "subset": subset, "truth": truth, **stats_,
                          "flag": flag, "train_accuracy": self.metrics.get("train_accuracy", math.nan),
                          "test_accuracy": self.metrics.get("test_accuracy", math.nan)})

    def scored(self, estimator: str, truth: str, subset: str, tp: dict, predicted, actual) -> None:
        """Pearson and Spearman of `predicted` vs `actual` with intervals and p-values, one row."""
        options = self.options
        stats_ = correlate(predicted, actual, resamples=options["resamples"], permutations=options["permutations"],
                           confidence=options["confidence"],
                           seed=stream_seed(options["seed"], *self.cell.values(), tp["name"], truth, subset))
        self.row(tp, estimator, truth, subset, stats_)


def chunk_of(truth: Truth, sets: list, size: int, index: int, source: str) -> list:
    """Chunk `index` of a truth's sets (grid.chunk); ValueError naming the chunks that exist."""
    chunks = grid.chunk(sets, size)
    if not 0 <= index < len(chunks):
        raise ValueError(f"{truth.folder()}/chunk{index:04d}.parquet: {source} makes {len(chunks)} chunks of "
                         f"{size}" + (f", chunk0000 to chunk{len(chunks) - 1:04d}" if chunks else ""))
    return chunks[index]
