"""An estimator that fails is a flagged row, not a lost study; the derivatives an estimator
requires are probed before it runs.

- `influence.on_error: flag` (default): an estimator that raises inside fit or scores gets NaN Δ̂
  with the status `failed: <type>: <message>`, its traceback in the diagnostics and the log, and
  the job returns; `stop` raises. A missing requirement (RequirementError) always stops.
- `requires = ("second_derivatives",)` / `("forward_mode",)`: probed on one training point; a
  model that lacks it (nn.EmbeddingBag lacks both) refuses the estimator before `fit`, with
  `unsupported: ...` and one log line; a model that has it runs the estimator.
- The correlations name the failure (`estimator_failed:failed: ...`) and the verdict reads it as
  a failed estimator.
"""

import math
import textwrap

import pandas as pd
import pytest
import torch

from fragility.data.split import Split
from fragility.estimators.base import RequirementError
from fragility.io import read_json
from fragility.study import correlate, pipeline, verdict

ESTIMATORS = textwrap.dedent('''
    import torch
    from torch import nn
    from fragility.estimators.base import Estimator, EstimatorScores, RequirementError


    def ones(context, test_points):
        return EstimatorScores(torch.ones(len(test_points), context.n_train, dtype=context.theta.dtype),
                               ["ok"] * len(test_points))


    class Raises(Estimator):
        """Fails inside fit, as a user's estimator with a bug does."""

        def fit(self, context):
            super().fit(context)
            return {}["no such key; " + "x" * 300]


    class Lacks(Estimator):
        """A requirement found missing inside fit: a config error, never a flagged row."""

        def fit(self, context):
            raise RequirementError(f"{context.cell}: the estimator 'lacks' requires something this model has not")


    class NeedsCurvature(Estimator):
        requires = ("second_derivatives",)

        def scores(self, test_points):
            assert self.context is not None, "scores without fit"
            return ones(self.context, test_points)


    class NeedsTangents(NeedsCurvature):
        requires = ("forward_mode",)


    def real_bag(input_shape, n_classes):
        """nn.EmbeddingBag (mean): PyTorch has neither its second nor its forward-mode derivative."""
        return nn.Sequential(nn.EmbeddingBag(8, 3, mode="mean"), nn.Linear(3, n_classes))
''')
QUIET = dict(log=lambda *a: None)
TRAIN = {"optimizer": "gd", "lr": 0.1, "steps": 20, "check_every": 1000}


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """An MLP on 3 features and an nn.EmbeddingBag on token ids, each trained 20 steps, with two test
    points."""
    root = tmp_path_factory.mktemp("failures")
    (root / "mine.py").write_text(ESTIMATORS)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(24, 3, generator=gen, dtype=torch.float64)
    labels = (features[:, 0] > 0).long()
    Split(features[:18], labels[:18], features[18:], labels[18:], n_classes=2).save(root / "features.pt")
    tokens = torch.randint(0, 8, (24, 4), generator=gen)
    Split(tokens[:18], labels[:18], tokens[18:], labels[18:], n_classes=2).save(root / "tokens.pt")
    out = {}
    for arch, data, models in [("mlp-d1-w3", "features.pt", None),
                               ("bag", "tokens.pt", {"bag": {"factory": f"{root}/mine.py:real_bag"}})]:
        paths = {name: str(root / f"{arch}-{name}") for name in ("model.pt", "metrics.json", "tp.json")}
        pipeline.train(str(root / data), arch, 0.01, 0, TRAIN, "float64", "cpu", paths["model.pt"], paths["metrics.json"],
                       models_cfg=models, **QUIET)
        pipeline.pick_test_points(paths["model.pt"], str(root / data), ["max", "median"], paths["tp.json"], "cpu")
        out[arch] = {**paths, "data": str(root / data)}
    return root, out


def influence(cells, arch, name, cls, **kwargs):
    """compute_influence of the class `cls` of mine.py in the cell `arch`: (table, diagnostics, log lines)."""
    root, paths = cells
    p, lines = paths[arch], []
    table, diag = str(root / f"{arch}-{name}.parquet"), str(root / f"{arch}-{name}.json")
    pipeline.compute_influence(p["model.pt"], p["data"], p["tp.json"], name, {"method": f"{root}/mine.py:{cls}"}, 0.01,
                               table, diag, device_name="cpu", log=lines.append, **kwargs)
    return pd.read_parquet(table), read_json(diag), lines


def test_an_estimator_that_raises_is_a_failed_row_with_its_traceback(cells):
    table, diagnostics, lines = influence(cells, "mlp-d1-w3", "raises", "Raises")
    status = table.status.iloc[0]
    assert status.startswith("failed: KeyError: 'no such key, xxx") and status.endswith("…")
    assert len(status) == len("failed: KeyError: ") + 120 and ";" not in status  # `;` separates flags
    assert (table.status == status).all() and table.predicted_loss_change.isna().all()
    assert len(table) == 2 * 18 and set(table.test_point) == {"max", "median"}  # every test point, every row
    assert diagnostics["status"] == status and [t["status"] for t in diagnostics["test_points"]] == [status] * 2
    assert "Traceback (most recent call last)" in diagnostics["traceback"] and "mine.py" in diagnostics["traceback"]
    assert 'return {}["no such key' in diagnostics["traceback"]
    first = next(line for line in lines if status in line)
    assert first.startswith("raises in cell ") and "Traceback" in first  # names the estimator and cell, with the trace


def test_on_error_stop_raises_the_estimator_s_error(cells):
    with pytest.raises(KeyError, match="no such key"):
        influence(cells, "mlp-d1-w3", "raises", "Raises", on_error="stop")
    with pytest.raises(ValueError, match="influence.on_error must be one of flag, stop, got 'ignore'"):
        influence(cells, "mlp-d1-w3", "raises", "Raises", on_error="ignore")


def test_a_missing_requirement_stops_whatever_on_error_says(cells):
    with pytest.raises(RequirementError, match="the estimator 'lacks' requires something"):
        influence(cells, "mlp-d1-w3", "lacks", "Lacks", on_error="flag")


def test_on_error_is_a_study_key_with_flag_by_default_and_an_override_per_architecture():
    import jsonschema
    import yaml

    from fragility.study import grid
    from workflow_files import REPO

    config = {"studies": {"s": {"influence": {"damping": 0.01, "methods": {"exact": {}}},
                                "overrides": {"b": {"influence": {"on_error": "stop"}}}}}}
    assert grid.influence_on_error(config, "s", "a") == "flag" and grid.influence_on_error(config, "s", "b") == "stop"
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    block = {**schema["$defs"]["influence"], "$defs": schema["$defs"]}
    jsonschema.validate({"damping": 0.01, "methods": {"exact": {}}, "on_error": "stop"}, block)
    with pytest.raises(jsonschema.ValidationError, match="'ignore' is not one of"):
        jsonschema.validate({"damping": 0.01, "methods": {"exact": {}}, "on_error": "ignore"}, block)


def test_failure_status_is_one_short_line():
    assert pipeline.failure_status(RuntimeError("boom\nsecond line")) == "failed: RuntimeError: boom"
    assert pipeline.failure_status(ZeroDivisionError()) == "failed: ZeroDivisionError"
    assert pipeline.failure_status(ValueError("a; b")) == "failed: ValueError: a, b"


@pytest.mark.parametrize("cls,status", [
    ("NeedsCurvature", "unsupported: derivative of _embedding_bag_backward"),
    ("NeedsTangents", "unsupported: forward-mode derivative of _embedding_bag"),
])
def test_a_required_derivative_the_model_lacks_refuses_the_estimator_before_fit(cells, cls, status):
    """The probe finds the missing derivative: NaN scores, `unsupported: ...`, one log line naming
    the estimator, the cell and the derivative; fit never runs (its scores would be ones)."""
    table, diagnostics, lines = influence(cells, "bag", "mine", cls)
    assert (table.status == status).all() and table.predicted_loss_change.isna().all()
    assert diagnostics["status"] == status and diagnostics["refused"] in ("second_derivatives", "forward_mode")
    refusals = [line for line in lines if "refused" in line]
    assert len(refusals) == 1 and refusals[0].startswith(f"mine in cell {cells[0]}: refused, {status}")
    assert diagnostics["refused"] in refusals[0]


@pytest.mark.parametrize("cls", ["NeedsCurvature", "NeedsTangents"])
def test_a_model_with_the_derivative_runs_the_estimator(cells, cls):
    table, diagnostics, lines = influence(cells, "mlp-d1-w3", "mine", cls)
    assert (table.status == "ok").all() and (table.predicted_loss_change == 1.0).all()
    assert not any("refused" in line for line in lines)


def test_the_correlations_and_the_verdict_name_a_failed_estimator():
    est = pd.DataFrame({"status": ["failed: KeyError: 'x'"] * 3})
    assert correlate.named_failure(est) == "failed: KeyError: 'x'"
    assert correlate.named_failure(pd.DataFrame({"status": ["ok", "ok"]})) == ""
    options = {"min_ceiling": 0.5, "reliable": 0.8, "partly_reliable": 0.5}
    for flag in ("estimator_failed", "estimator_failed:failed: KeyError: 'x'",
                 "estimator_failed:unsupported: derivative of _embedding_bag_backward"):
        word, reason = verdict.decide(flag, math.nan, math.nan, False, options)
        assert word == verdict.FAILED and "NaN" in reason, flag
