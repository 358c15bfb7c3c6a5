"""Which figures a study has something to draw in, decided from its config alone (torch-free), so
that the workflow asks for exactly those: a sweep needs two values of what it sweeps, the
estimator comparison needs two estimators."""

from __future__ import annotations

from collections import Counter

from ..models.registry import MLP_NAME
from .grid import estimators, study_block

# the overview figures every study may have (report/figures.py draws each by this name)
OVERVIEW_FIGURES = ("predicted_vs_actual", "correlation_by_test_point", "correlation_vs_depth", "correlation_vs_width",
                    "correlation_vs_decay", "estimator_comparison")


def mlp_shapes(architectures) -> list[tuple[int, int]]:
    """(depth, width) of every `mlp-d{depth}-w{width}` architecture."""
    return [(int(m.group(1)), int(m.group(2))) for m in map(MLP_NAME.match, architectures) if m]


def sweep_options(config: dict, study: str) -> dict:
    """The width at which depth is swept and the depth at which width is swept: the study's
    `figures.depth_sweep_width` / `width_sweep_depth`, else the most common among its nets."""
    block = study_block(config, study)
    figures = block.get("figures", {})
    shapes = mlp_shapes(block["architectures"])
    out = {}
    if shapes:
        out["depth_sweep_width"] = int(figures.get("depth_sweep_width", Counter(w for _, w in shapes).most_common(1)[0][0]))
        out["width_sweep_depth"] = int(figures.get("width_sweep_depth", Counter(d for d, _ in shapes).most_common(1)[0][0]))
    return out


def compares_estimators(config: dict, study: str) -> bool:
    """Whether some architecture of `study` is scored by two or more estimators."""
    block = study_block(config, study)
    return any(len(estimators(config, study, arch)) >= 2 for arch in block["architectures"])


def overview_figures(config: dict, study: str) -> list[str]:
    """The overview figures with something to draw for `study`."""
    block = study_block(config, study)
    shapes = mlp_shapes(block["architectures"])
    options = sweep_options(config, study)
    names = ["predicted_vs_actual", "correlation_by_test_point"]
    if len({d for d, w in shapes if w == options.get("depth_sweep_width")}) >= 2:
        names.append("correlation_vs_depth")
    if len({w for d, w in shapes if d == options.get("width_sweep_depth")}) >= 2:
        names.append("correlation_vs_width")
    if len(block["decays"]) >= 2:
        names.append("correlation_vs_decay")
    if compares_estimators(config, study):
        names.append("estimator_comparison")
    return names
