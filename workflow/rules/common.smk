import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.0")

SOURCE = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SOURCE)
CONDA_ENV = "../../envs/environment.yaml"

from fragility.study import correlate, grid, selection  # noqa: E402
from fragility.report import aggregate  # noqa: E402
from fragility.runtime import file_logger  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")
grid.check_config(config)

RESULTS = "results"
CELL = os.path.join(RESULTS, "{study}/{dataset}/{arch}/wd{decay}/seed{seed}")
LOGS = os.path.join(RESULTS, "logs/{study}/{dataset}/{arch}/wd{decay}/seed{seed}")
BENCH = os.path.join(
    RESULTS, "benchmarks/{study}/{dataset}/{arch}/wd{decay}/seed{seed}"
)


wildcard_constraints:
    study="[a-z0-9_]+",
    dataset="[a-z0-9_]+",
    arch="[A-Za-z0-9-]+",
    decay="[0-9.e+-]+",
    seed="[0-9]+",
    estimator="[a-z0-9_]+",
    chunk="[0-9]+",


def enabled_studies(config):
    return grid.enabled_studies(config)


def cell_of(wildcards):
    return {k: wildcards[k] for k in ("study", "dataset", "arch", "decay", "seed")}


def arch_cfg(wildcards):
    return grid.arch_config(config, wildcards.study, wildcards.arch)


def settings_of(block, unused=()):
    """Params for a config block: its settings less the run-only keys (grid.RUN_ONLY_KEYS) and
    the keys the rule does not use (`unused`), so that changing those re-runs nothing.
    """
    return lambda w: {
        k: v
        for k, v in grid.result_settings(config, w.study, w.arch, block).items()
        if k not in unused
    }


def damping_of(wildcards):
    return grid.damping_for(arch_cfg(wildcards)["influence"], decay_of(wildcards))


def decay_of(wildcards):
    return grid.decay_value(config, wildcards.study, wildcards.decay)


def cell_paths(study, pattern):
    """`pattern` (relative to a cell directory) for every cell of `study`."""
    return [
        os.path.join(grid.cell_dir(c, RESULTS), "") + pattern
        for c in grid.cells(config, study)
    ]


# Cluster resources of the heavy rules, from the study block's `resources.<train|influence|loo>`
# with the architecture's `overrides` merged in (so a ResNet asks for a GPU and hours while an Iris
# net asks for one core and minutes). Keys the config leaves out take these values.
RESOURCE_FALLBACKS = {
    "train": {"mem_mb": 2000, "runtime": 60, "gpu": 0, "cpus_per_task": 1},
    "influence": {"mem_mb": 4000, "runtime": 60, "gpu": 0, "cpus_per_task": 1},
    "loo": {"mem_mb": 2000, "runtime": 60, "gpu": 0, "cpus_per_task": 1},
}
# A retried job gets attempt × the configured value of these:
GROWS_WITH_ATTEMPT = ("mem_mb", "runtime")


def rule_resources_cfg(wildcards, rule_key):
    """`resources.<rule_key>` of the cell's merged config ({} when the config sets none)."""
    return arch_cfg(wildcards).get("resources", {}).get(rule_key, {})


def res(rule_key, key, fallback):
    """A resource value for `rule_key` from the merged config, grown with the attempt number."""

    def get(wildcards, attempt):
        if "study" not in wildcards.keys():
            return fallback
        value = rule_resources_cfg(wildcards, rule_key).get(key, fallback)
        return value * attempt if key in GROWS_WITH_ATTEMPT else value

    return get


def gpu_model(rule_key):
    """`gpu_model` for the SLURM plugin (`--gpus=<model>:<n>`), only for jobs that ask for a GPU."""

    def get(wildcards):
        cfg = rule_resources_cfg(wildcards, rule_key)
        if cfg.get("gpu", 0) > 0 and cfg.get("gpu_model"):
            return cfg["gpu_model"]
        return None  # dropped: no --gpus model constraint

    return get


def cluster_resources(rule_key):
    """All resources of a heavy rule: `resources: **cluster_resources("train")`.

    mem_mb (MB) and runtime (minutes) grow with `attempt`; gpu and gpu_model become the slurm
    plugin's `--gpus=[model:]n`; cpus_per_task its `--cpus-per-task` (also the rule's threads).
    """
    fallbacks = RESOURCE_FALLBACKS[rule_key]
    resources = {key: res(rule_key, key, value) for key, value in fallbacks.items()}
    resources["gpu_model"] = gpu_model(rule_key)
    return resources


def cluster_threads(rule_key):
    """Threads of a heavy rule = its configured `cpus_per_task` (torch uses that many)."""
    fallback = RESOURCE_FALLBACKS[rule_key]["cpus_per_task"]
    return lambda wildcards: res(rule_key, "cpus_per_task", fallback)(wildcards, 1)


def cluster_group(stage, rule_key):
    """Group name of a CPU-only job when the cell's config sets `resources.group: true`.

    Stage "fit" joins train → test_points → influence → drift control of a cell into one cluster
    job; stage "loo" joins a cell's LOO chunks and noise repeat. `--group-components fit=N` (profiles/slurm) packs N
    cells into one submission. GPU jobs are never grouped: parallel members would add up GPUs.
    """

    def get(wildcards):
        cfg = arch_cfg(wildcards).get("resources", {})
        if cfg.get("group", False) and cfg.get(rule_key, {}).get("gpu", 0) == 0:
            return stage
        return None

    return get


def device():
    return config.get("device", "auto")


def study_targets(study):
    """The final outputs of a study: its tables and figures."""
    outputs = [
        f"{RESULTS}/{study}/correlations.parquet",
        f"{RESULTS}/{study}/summary.csv",
        f"{RESULTS}/{study}/training.csv",
    ]
    outputs += STUDY_FIGURES.get(study, [])
    return outputs


STUDY_FIGURES = {}


def loo_chunks(wildcards):
    """The re-training chunks of a cell, known once its `select` checkpoint has run."""
    selected = checkpoints.select.get(**wildcards).output[0]
    indices = grid.read_selected(selected)
    size = arch_cfg(wildcards)["loo"]["chunk_size"]
    n_chunks = (len(indices) + size - 1) // size
    return [
        os.path.join(CELL.format(**wildcards), f"loo/chunk{k:04d}.parquet")
        for k in range(n_chunks)
    ]


def repeat_settings(wildcards):
    """`loo.repeats` of a cell's merged config, with its defaults (count 0 disables)."""
    return {
        "count": 0,
        "order_seed_offset": 1,
        **arch_cfg(wildcards)["loo"].get("repeats", {}),
    }


def loo_repeat_input(wildcards):
    """The repeat table of a cell, or nothing when `loo.repeats.count` is 0."""
    if repeat_settings(wildcards)["count"] == 0:
        return []
    return [os.path.join(CELL.format(**wildcards), "loo/repeat.parquet")]


def correlate_job(input, output, params, log):
    """Adapter for rule correlate (runs inside the Snakemake process)."""
    correlate.correlate_cell(
        params.cell,
        dict(zip(params.estimators, input.influence)),
        input.test_points,
        input.selected,
        list(input.chunks),
        input.drift,
        input.metrics,
        output.rows,
        output.correlations,
        repeat_path=input.repeat[0] if input.repeat else None,
        options=params.correlation,
    )
    file_logger(log[0])("correlations written")


def aggregate_job(input, output, params, log):
    """Adapter for rule aggregate (runs inside the Snakemake process)."""
    aggregate.aggregate_study(
        input.correlations,
        input.rows,
        input.metrics,
        input.diagnostics,
        output.correlations,
        output.summary,
        output.rows,
        output.training,
        output.diagnostics,
        by_seed_out=output.by_seed,
        noise_out=output.noise,
        estimators_out=output.estimators,
        reference=params.exact,
        correlation=params.correlation,
    )
    file_logger(log[0])("study tables written")


# report (workflow/rules/report.smk)
OVERVIEW_FIGURES = [
    "predicted_vs_actual",
    "correlation_vs_depth",
    "correlation_vs_width",
    "correlation_vs_decay",
    "estimator_comparison",
]
REPORT_PAGES = ["summary", "summary_by_seed", "noise", "estimators", "config"]


def report_targets(study):
    """A study's report-only outputs: overview figures, HTML tables, gathered benchmarks."""
    return (
        [f"{RESULTS}/{study}/figures/overview/{name}.png" for name in OVERVIEW_FIGURES]
        + [f"{RESULTS}/{study}/report/{name}.html" for name in REPORT_PAGES]
        + [
            f"{RESULTS}/{study}/benchmarks.csv",
            f"{RESULTS}/{study}/report/benchmarks.html",
        ]
    )


def exact_estimators(study):
    """(arch, estimator) pairs computed with the exact (full) Hessian: the estimator study's
    reference (an exact solve of the Gauss-Newton matrix is an estimator like any other).
    """
    return [
        (arch, name)
        for arch in grid.study_block(config, study)["architectures"]
        for name, method in grid.estimators(config, study, arch).items()
        if method.get("method", name) == "exact"
        and method.get("hessian", "full") == "full"
    ]


def yaml_dump(value):
    import yaml

    return yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=100)
