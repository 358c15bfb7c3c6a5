"""An ensemble over seeds: one inner estimator fitted on each trained model of the cell's seeds.

    Δ̂_i(z_t) = (1/M) Σ_m Δ̂_i^(m)(z_t)

with Δ̂^(m) the inner estimator's Δ̂ fitted on model m: this cell's θ* and the θ* of each of the
cell's other seeds (same dataset × architecture × decay: `Context.models`, grid.estimator_model_cells),
every member scored at this cell's test points on the same split (the split depends on the dataset,
not on the seed). Each member is the inner estimator on its own model, with this cell's decay and
damping; the sign and scale are the inner estimator's (Δ̂ > 0: removing z_i raises the test loss).
Members on one and the same θ* give the inner estimator itself; where every seed reaches the same
θ* (a strictly convex objective trained to convergence) so does the ensemble.

Config: `influence.methods.<name>: {method: ensemble, estimator: {method: lissa, depth: 200, ...}}`,
`estimator` the inner estimator's block, checked when the DAG is built like any estimator block
(registry.check_estimator). The inner method must need no more than one trained model: one that
requires checkpoints or several models, or an ensemble, is refused. An ensemble needs ≥ 2 seeds
and `fuse_fit: false` (a fused job trains one model).

Status: a test point is "ok" only if every member scored it "ok"; otherwise its status is the first
failing member's, with the member named, e.g. "diverged (member seed 1)" (the inner status first, so
that a named failure such as "unsupported: …" still reads as one downstream). A mean over the
members that succeeded would be another estimator, differing by test point; it is not taken.

Diagnostics: per member (label "θ*" for this cell's model, "seed N" for another seed's) its fit
seconds, the flags its training recorded (a member that did not train is still a member: the
mean is the estimator as configured; this cell's own flags are reported by the aggregate tables)
and the inner estimator's diagnostics; per test point each member's status and `member_pearson`,
the mean pairwise Pearson correlation of the members' Δ̂ over the training points (NaN with fewer
than two members that scored it), the spread that the average hides.

‖Δθ̂_i‖ and ‖∇ℓ(z_i)‖ are per-model quantities, each in its own member's parameter space: the
ensemble leaves them NaN. All M fitted members are kept between `fit` and `scores` (M times the
inner estimator's memory).
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from .base import Context, Estimator, EstimatorScores, RequirementError

# what a member (one trained model) cannot give an inner estimator
MEMBER_CANNOT = ("checkpoints", "several_models")


def mean_pairwise_pearson(rows: torch.Tensor) -> float:
    """The mean over pairs m < m' of the Pearson correlation of rows m and m' ([M, n]); NaN for
    fewer than two rows or where a row is constant."""
    if len(rows) < 2:
        return math.nan
    centred = rows.double() - rows.double().mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    if not bool((norms > 0).all()):
        return math.nan
    unit = centred / norms[:, None]
    pairs = torch.triu_indices(len(rows), len(rows), offset=1)
    return float((unit @ unit.T)[pairs[0], pairs[1]].mean())


class Ensemble(Estimator):
    """`ensemble`: Δ̂_i = (1/M) Σ_m Δ̂_i^(m), the inner estimator's Δ̂ averaged over the cell's
    seeds (module docstring: status, diagnostics, what is left NaN)."""

    name = "ensemble"
    requires = ("several_models",)
    notes = ("an inner estimator's Δ̂ averaged over the θ* of every seed of the cell",
             'averaging hides the spread between seeds; one failing member fails the test point')
    estimator_options = ("estimator",)  # an option whose value is an estimator's config block

    def __init__(self, estimator: dict | None = None):
        super().__init__()
        from .registry import make_estimator, method_of

        if not isinstance(estimator, dict) or "method" not in estimator:
            raise ValueError("ensemble: `estimator` must be the inner estimator's block with its method, e.g. "
                             f"estimator: {{method: lissa, depth: 200}}; got {estimator!r}")
        self.inner = dict(estimator)
        self.inner_method = method_of("estimator", self.inner)
        prototype = make_estimator("estimator", self.inner, "ensemble.estimator")
        if getattr(prototype, "estimator_options", ()):
            raise ValueError(f"ensemble.estimator: '{self.inner_method}' is an ensemble itself; nest none")
        cannot = [need for need in prototype.requires if need in MEMBER_CANNOT]
        if cannot:
            raise ValueError(f"ensemble.estimator: '{self.inner_method}' requires {cannot[0]}, which one member (one "
                             "trained model) cannot give")
        self.requires = self.requires + tuple(need for need in prototype.requires if need not in self.requires)
        self.members: list[tuple[str, Estimator]] = []

    def fit(self, context: Context) -> "Ensemble":
        from .registry import make_estimator

        super().fit(context)
        if not context.models:
            raise RequirementError(f"{context.cell or 'this cell'}: the estimator 'ensemble' requires the models of the cell's "
                             "other seeds (several seeds, fuse_fit: false)")
        models = [("θ*", context.net, context.theta, ())] + [(m.label, m.net, m.theta, tuple(m.flags))
                                                            for m in context.models]
        self.members, described = [], []
        for label, net, theta, flags in models:
            started = time.perf_counter()
            member = make_estimator("estimator", self.inner, "ensemble.estimator")
            member.fit(dataclasses.replace(context, net=net, theta=theta, models=[],
                                           cell=f"{context.cell or 'this cell'} (member {label})"))
            seconds = time.perf_counter() - started
            self.members.append((label, member))
            described.append({"model": label, "fit_seconds": seconds, "flags": list(flags)})
        self.diagnostics = {"method": self.name, "inner_method": self.inner_method, "member_count": len(models),
                            "fit_seconds": sum(d["fit_seconds"] for d in described), "members": described}
        return self

    def scores(self, test_points: list[dict]) -> EstimatorScores:
        c = self.context
        started = time.perf_counter()
        member_scores = []
        for (label, member), described in zip(self.members, self.diagnostics["members"]):
            scores = member.scores(test_points).checked()
            member_scores.append(scores)
            described["diagnostics"] = {k: v for k, v in dict(member.diagnostics).items() if k != "solves"}
        stacked = torch.stack([s.predicted_loss_change.to(torch.float64) for s in member_scores])  # [M, T, n]
        predicted = stacked.mean(dim=0)
        seconds = time.perf_counter() - started
        labels = [label for label, _ in self.members]
        status, outcomes = [], []
        for t, tp in enumerate(test_points):
            statuses = {label: s.status[t] for label, s in zip(labels, member_scores)}
            failed = [(label, s) for label, s in statuses.items() if s != "ok"]
            status.append("ok" if not failed else f"{failed[0][1]} (member {failed[0][0]})")
            ok = [m for m, s in enumerate(member_scores) if s.status[t] == "ok"]
            outcomes.append({"test_point": tp["name"], "status": status[-1], "member_statuses": statuses,
                             "member_pearson": mean_pairwise_pearson(stacked[ok, t]),
                             "seconds_all_points": seconds})
        return EstimatorScores(predicted.to(c.theta.dtype), status, outcomes)
