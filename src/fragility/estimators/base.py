"""The estimator interface: an attributor fitted once per trained model, then asked for Δ̂.

    estimator = EstimatorClass(**options)          # the options of its config block
    estimator.fit(context)                         # once per trained model
    scores = estimator.scores(test_points)         # Δ̂ of every training point for each test point

Δ̂ (`predicted_loss_change[t, i]`) predicts the change in test point t's loss when training point i
is removed and the model re-trained: ℓ(z_t, θ₋ᵢ) − ℓ(z_t, θ*), on the removal scale and sign of the
README (removing z_i is up-weighting it by ε = −1/n). Each test point has a status, "ok" or a
reason; a test point that is not "ok" has NaN scores, and NaN scores are never "ok"
(`EstimatorScores.checked`).

`requires` declares what an estimator needs beyond a model and its data (`REQUIREMENTS`), so
that the workflow refuses an impossible combination before any work. Where each is enforced:

- `checkpoints`, `several_models`: when the DAG is built (the config tells whether the study keeps
  checkpoints or has several seeds), and again in the job (`check_requirements`);
- `last_linear_layer`: in the estimator's first job (`check_requirements`, RequirementError: the
  run stops, naming the estimator and the cell);
- `second_derivatives`, `forward_mode`: in each job, before `fit`, by a probe on one training
  point (`missing_derivative`: a Hessian-vector product by double backward; a torch.func.jvp).
  Where PyTorch implements no such derivative of a layer (nn.EmbeddingBag has neither), the
  estimator is refused without running: NaN scores with the status `unsupported: derivative of
  <op>` (or `unsupported: forward-mode derivative of <op>`), one log line, and the job succeeds.
  The built-in inverse-Hessian methods require `second_derivatives` (exact, CG, LiSSA, Arnoldi,
  with either curvature matrix: the Gauss-Newton product is a double backward too); none of them
  requires `forward_mode`, since scoring falls back to reverse-mode per-sample gradients
  (engine/objective.py, `directional_derivatives`).

This module imports no torch: building the DAG reads `REQUIREMENTS` from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

REQUIREMENTS: dict[str, str] = {
    "second_derivatives": "Hessian-vector products of the training objective (double backward)",
    "forward_mode": "forward-mode derivatives (torch.func.jvp) through the model",
    "checkpoints": "θ at saved steps of the training run (Context.models)",
    "last_linear_layer": "a model whose last parameterised layer is an nn.Linear",
    "several_models": "several trained models of the same data, architecture and decay (Context.models)",
}


class RequirementError(ValueError):
    """The cell's model or study lacks what an estimator requires (a last linear layer,
    checkpoints, several models, a task's output function): a configuration error, which stops the
    job whatever `influence.on_error` says."""


@dataclass
class TrainedModel:
    """One more trained model of a context: a checkpoint of the run, or another seed's θ*."""

    net: Any  # engine.flat.FlatModel
    theta: Any  # torch.Tensor [p]
    label: str = ""  # e.g. "step 300", "seed 1"
    learning_rate: float = math.nan  # a checkpoint's: the learning rate of the step that followed it
    flags: tuple = ()  # another seed's: the flags its training recorded (metrics "flags", health.training_flags)


@dataclass
class Context:
    """What an estimator is fitted on: the trained model with its Task, θ*, the split, the
    training objective's decay λ and the influence damping δ, where to compute, and chunk sizes.
    `models` holds further trained models where the study provides them (`requires`
    "checkpoints" or "several_models"); `cell` names the cell in messages."""

    net: Any  # engine.flat.FlatModel; net.task is the Task
    theta: Any  # θ*, [p]
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    decay: float
    damping: float
    device: Any = "cpu"
    chunk_size: int = 1024
    scoring_chunk_size: int | None = None
    models: list[TrainedModel] = field(default_factory=list)
    cell: str = ""

    @property
    def task(self):
        return self.net.task

    @property
    def n_train(self) -> int:
        return len(self.y_train)


@dataclass
class EstimatorScores:
    """Δ̂ for T test points × n training points, a status and diagnostics per test point, and
    optional per-training-point columns: ‖Δθ̂_i‖ (`predicted_param_change_norm`) and ‖∇ℓ(z_i)‖
    (`train_grad_norm`), NaN where not computed, and an estimator's own [T, n] `columns`."""

    predicted_loss_change: Any  # torch.Tensor [T, n]
    status: list[str]
    diagnostics: list[dict] = field(default_factory=list)
    predicted_param_change_norm: Any = None  # [n] or None
    train_grad_norm: Any = None  # [n] or None
    columns: dict = field(default_factory=dict)  # further [T, n] columns of the table, by name

    @classmethod
    def missing(cls, n_test: int, n_train: int, status: str, detail: dict | None = None) -> "EstimatorScores":
        """NaN scores for every test point, all with `status` (an estimator refused or failed), and
        `detail` as each test point's diagnostics."""
        import torch

        return cls(torch.full((n_test, n_train), math.nan, dtype=torch.float64), [status] * n_test,
                   [dict(detail or {}) for _ in range(n_test)])

    def checked(self) -> "EstimatorScores":
        """Status and scores agree: a test point that is not "ok" gets NaN scores; one whose
        scores are not all finite gets the status "non_finite_scores"."""
        import torch

        predicted = self.predicted_loss_change
        if len(self.status) != len(predicted):
            raise ValueError(f"an estimator returned {len(self.status)} statuses for {len(predicted)} test points")
        for t, status in enumerate(self.status):
            if status != "ok":
                predicted[t] = math.nan
            elif not bool(torch.isfinite(predicted[t]).all()):
                self.status[t] = "non_finite_scores"
        return self

    def outcomes(self, test_points: list[dict]) -> list[dict]:
        """Per test point: its name, its status and the estimator's diagnostics of it."""
        out = []
        for t, tp in enumerate(test_points):
            extra = self.diagnostics[t] if t < len(self.diagnostics) else {}
            out.append({"test_point": tp["name"], "status": self.status[t],
                        **{k: v for k, v in extra.items() if k not in ("test_point", "status")}})
        return out

    def table(self, test_points: list[dict]):
        """The influence table: one row per (test point, training point)."""
        import pandas as pd
        import torch

        n = self.predicted_loss_change.shape[1]

        def column(values):
            if values is None:
                return torch.full((n,), math.nan, dtype=torch.float64).numpy()
            return values.double().numpy()

        norms, grad_norms = column(self.predicted_param_change_norm), column(self.train_grad_norm)
        frames = [pd.DataFrame({
            "test_point": tp["name"],
            "test_index": int(tp["index"]),
            "train_index": range(n),
            "predicted_loss_change": self.predicted_loss_change[t].detach().cpu().double().numpy(),
            "predicted_param_change_norm": norms,
            "train_grad_norm": grad_norms,
            "status": self.status[t],
            **{name: values[t].detach().cpu().double().numpy() for name, values in self.columns.items()},
        }) for t, tp in enumerate(test_points)]
        return pd.concat(frames, ignore_index=True)


class Estimator:
    """An attributor: `fit(context)` once per trained model, then `scores(test_points)`.

    A subclass sets `name`, `requires` (keys of `REQUIREMENTS`) and either an `__init__` whose
    keyword arguments are its options, or a dataclass `Options` (nested, or `Options = Name` of a
    class in the same file; fields with defaults and `metadata={"help": ...}`, as kronfluence's
    arguments; `self.options` is then an instance). The config block's options are exactly those:
    they are checked against the source when the DAG is built. `diagnostics` (a dict) goes to the
    estimator's JSON next to its table, with each test point's status and diagnostics
    (`EstimatorScores.outcomes`). `notes`, a literal (what it computes, why it might fail), one
    short line each, is the report's line for the estimator (read from the source:
    estimators/registry.notes)."""

    name: ClassVar[str] = "estimator"
    requires: ClassVar[tuple[str, ...]] = ()
    notes: ClassVar[tuple[str, str] | None] = None
    Options: ClassVar[type | None] = None

    def __init__(self, **options):
        self.options = self.Options(**options) if self.Options is not None else options
        self.diagnostics: dict = {}
        self.context: Context | None = None

    def fit(self, context: Context) -> "Estimator":
        """Work done once per trained model (keep `context`)."""
        self.context = context
        return self

    def scores(self, test_points: list[dict]) -> EstimatorScores:
        """Δ̂ of every training point for each of `test_points` (dicts with `name` and `index`
        into the context's test set)."""
        raise NotImplementedError


def last_linear_layer(model):
    """The model's last parameterised module if it is an nn.Linear (in `modules()` order), else
    None."""
    from torch import nn

    last = None
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = module
    return last if isinstance(last, nn.Linear) else None


def check_requirements(estimator: Estimator, context: Context, label: str) -> None:
    """RequirementError naming the estimator and `label` (the cell) unless `context` gives what
    the estimator `requires`: a last linear layer, further trained models. The derivatives it
    requires are probed by `missing_derivative`, which refuses rather than stops."""
    for need in estimator.requires:
        if need not in REQUIREMENTS:
            raise RequirementError(f"{label}: the estimator '{label_of(estimator)}' requires '{need}', which the workflow "
                             f"does not know; known: {', '.join(REQUIREMENTS)}")
        missing = ((need == "last_linear_layer" and last_linear_layer(context.net.model) is None)
                   or (need in ("checkpoints", "several_models") and not context.models))
        if missing:
            raise RequirementError(f"{label}: the estimator '{label_of(estimator)}' requires {REQUIREMENTS[need]}, "
                             f"which this cell's model does not have")


PROBED = ("second_derivatives", "forward_mode")  # requirements checked by running the derivative once


def missing_derivative(estimator: Estimator, context: Context) -> tuple[str, str, str] | None:
    """(requirement, status, PyTorch's message) for the first derivative the estimator `requires`
    that the model lacks, else None. The probe runs on one training point at θ*: for
    "second_derivatives" a Hessian-vector product of its loss by double backward, for
    "forward_mode" a torch.func.jvp of it (engine/objective.py, `probe_derivative`); the status is
    `ihvp.unsupported_status` of PyTorch's "not implemented" error. Any other error propagates."""
    from ..engine.ihvp import unsupported_status
    from ..engine.objective import probe_derivative

    for need in (n for n in estimator.requires if n in PROBED):
        try:
            probe_derivative(context.net, context.theta, context.x_train[:1], context.y_train[:1], need)
        except (NotImplementedError, RuntimeError) as err:
            status = unsupported_status(err)
            if status is None:
                raise
            return need, status, str(err).splitlines()[0]
    return None


def label_of(estimator: Estimator) -> str:
    return getattr(estimator, "method", None) or f"{type(estimator).__module__}.{type(estimator).__qualname__}"
