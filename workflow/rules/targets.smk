# What each study produces, declared once, by the study's `kind` (never by its name):
# every study gets its tables, report pages and the overview figures it has something to draw
# in (study/outputs.py); kinds iris, mnist_small and table1 add the paper's own figures and tables.
from fragility.report import tables  # noqa: E402
from fragility.study import outputs  # noqa: E402

IRIS_FIGURES = [
    "spearman_vs_depth",
    "spearman_vs_width",
    "param_change_scatter",
    "estimator_spearman_vs_depth",
    "top_eigenvalue_vs_depth",
]
MNIST_SMALL_FIGURES = [
    "scatter_top_and_percentile",
    "correlation_by_subset",
    "correlation_vs_decay",
    "correlation_across_test_points",
]
REPORT_PAGES = ["summary", "summary_by_seed", "noise", "estimators", "config"]


def figure_files(study, names, folder="figures"):
    return [
        f"{RESULTS}/{study}/{folder}/{name}.{ext}"
        for name in names
        for ext in ("png", "pdf")
    ]


KIND_OUTPUTS = {
    "audit": lambda study: [],
    "iris": lambda study: figure_files(study, IRIS_FIGURES),
    "mnist_small": lambda study: figure_files(study, MNIST_SMALL_FIGURES),
    "table1": lambda study: [
        f"{RESULTS}/{study}/table1.csv",
        f"{RESULTS}/{study}/table1_vs_paper.csv",
        f"{RESULTS}/{study}/report/table1.html",
    ]
    + figure_files(study, ["table1_vs_paper"]),
}


def study_kind(study):
    return outputs.study_kind(config, study)


def studies_of_kind(kind):
    return [study for study in config["studies"] if study_kind(study) == kind]


def kind_constraint(kind):
    """A wildcard constraint that matches the studies of `kind` only (or nothing)."""
    return "|".join(studies_of_kind(kind)) or "(?!)"


def study_targets(study):
    """The final outputs of a study: its tables, report pages and figures."""
    return (
        [
            f"{RESULTS}/{study}/{name}"
            for name in (
                "correlations.parquet",
                "summary.csv",
                "training.csv",
                "benchmarks.csv",
                "verdict.csv",
                "verdict_best.csv",
            )
        ]
        + [f"{RESULTS}/{study}/report/index.html"]
        + [f"{RESULTS}/{study}/report/{name}.html" for name in REPORT_PAGES]
        + [f"{RESULTS}/{study}/report/benchmarks.html"]
        + figure_files(
            study, outputs.overview_figures(config, study), "figures/overview"
        )
        + KIND_OUTPUTS[study_kind(study)](study)
        + truth_outputs(study)  # the other ground truths (ground_truths.smk)
        + estimator_study_outputs(study)
    )


def estimator_study_outputs(study):
    """The estimator study's table, figure and page, for a study that compares estimators."""
    if not outputs.compares_estimators(config, study):
        return []
    return [
        f"{RESULTS}/{study}/estimator_cost.csv",
        f"{RESULTS}/{study}/report/estimator_study.html",
    ] + figure_files(study, ["cost_vs_accuracy"], "figures/estimators")
