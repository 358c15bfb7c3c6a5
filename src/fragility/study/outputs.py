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


# --------------------------------------------------------------------------- what a study writes
def study_kind(config: dict, study: str) -> str:
    """The study's `kind`: table1, iris_sweep, ..., or audit (a study of one's own)."""
    return study_block(config, study).get("kind", "audit")


def truth_output_files(config: dict, study: str, results: str = "results") -> list[str]:
    """A study's outputs of the ground truths beyond LOO ([] when its `truths` are only loo)."""
    from ..truths.registry import study_enabled

    if set(study_enabled(config, study)) <= {"loo"}:
        return []
    files = [f"{results}/{study}/truths.csv", f"{results}/{study}/truths_correlations.parquet",
             f"{results}/{study}/figures/truths/correlation_by_truth.png"]
    if study_kind(config, study) == "table1":
        files.append(f"{results}/{study}/table1_truths.csv")
    return files


def exact_estimators(config: dict, study: str) -> list[tuple[str, str]]:
    """(arch, estimator) pairs solved with the exact full Hessian: the estimator study's reference
    (an exact solve of the Gauss-Newton matrix is an estimator like any other)."""
    return [(arch, name) for arch in study_block(config, study)["architectures"]
            for name, method in estimators(config, study, arch).items()
            if method.get("method", name) == "exact" and method.get("hessian", "full") == "full"]


def repeat_cells(config: dict, study: str) -> list[dict]:
    """The cells of `study` with repeat re-trainings (`loo.repeats.count` > 0)."""
    from .grid import cells, repeat_settings

    return [c for c in cells(config, study) if repeat_settings(config, study, c["arch"])["count"] > 0]


def deterministic_pairs(config: dict, study: str) -> list[list[str]]:
    """[arch, truth] pairs whose re-training has no minibatch order to vary (study/verdict.py)."""
    from .grid import arch_config
    from .verdict import deterministic_truths

    return [[arch, truth] for arch in study_block(config, study)["architectures"]
            for truth, fixed in deterministic_truths(arch_config(config, study, arch)).items() if fixed]


def estimator_diagnostics(config: dict, study: str, results: str = "results") -> list[tuple[str, dict]]:
    """(influence/{estimator}.json, the cell's keys) of every cell and estimator of `study`."""
    from .grid import cell_dir, cell_keys, cells

    return [(f"{cell_dir(c, results)}/influence/{name}.json", cell_keys(config, c))
            for c in cells(config, study) for name in estimators(config, study, c["arch"])]


def estimator_methods(config: dict, study: str) -> dict[str, str]:
    """{estimator name: its method} over the architectures of `study`."""
    return {name: settings.get("method", name) for arch in study_block(config, study)["architectures"]
            for name, settings in estimators(config, study, arch).items()}


def verdict_figures(config: dict, study: str, results: str = "results") -> list[tuple[str, str]]:
    """(PNG, caption) of the figures that carry a study's verdict: the scatter of Δ̂ against Δ and
    the correlations by ground truth (or, with LOO only, by estimator or by test point)."""
    root = f"{results}/{study}/figures"
    chosen = [(f"{root}/overview/predicted_vs_actual.png",
               "Predicted Δ̂ against the re-trained Δ, one panel per cell and test point, with each seed's Pearson (P) "
               "and Spearman (S) and bootstrap interval; dashed: the identity.")]
    if truth_output_files(config, study, results):
        chosen.append((f"{root}/truths/correlation_by_truth.png",
                       "Each estimator's correlation against every ground truth (LOO, PBRF, groups, LDS)."))
    elif "estimator_comparison" in overview_figures(config, study):
        chosen.append((f"{root}/overview/estimator_comparison.png",
                       "Every estimator against the same re-training, per cell and test point."))
    else:
        chosen.append((f"{root}/overview/correlation_by_test_point.png",
                       "Pearson and Spearman of Δ̂ with Δ per cell and test point."))
    return chosen


def verdict_links(config: dict, study: str) -> list[list[str]]:
    """[page, description] of the study's kind-specific pages and tables, linked from index.html."""
    links = []
    if study_kind(config, study) == "table1":
        links.append(["table1.html", "Table 1, and ours next to the paper's values"])
    if truth_output_files(config, study):
        links.append(["../truths.csv", "every estimator against every ground truth"])
    if compares_estimators(config, study):
        links.append(["estimator_study.html", "the estimator study: what each estimator computes, its cost and its "
                      "correlation with every ground truth"])
    return links
