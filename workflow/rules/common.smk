import inspect
import os
import re
import sys
import threading
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("8.0")

# The library is imported as installed in the environment, never through an inserted path:
# tools/setup.sh installs it editable into .venv, envs/environment.post-deploy.sh into the conda
# environment of `--sdm conda` (CONDA_ENV). PYTHONPATH=src runs a checkout whose environment
# has another copy installed; it reaches the jobs too (local and sbatch jobs inherit it).
SOURCE = os.path.join(workflow.basedir, "src")
CONDA_ENV = "../../envs/environment.yaml"
try:
    import fragility
except ImportError as error:
    raise WorkflowError(
        f"the library 'fragility' is not installed in this Python ({sys.executable}): run "
        f"`bash tools/setup.sh` (or `pip install --no-deps -e {workflow.basedir}`), or set "
        f"PYTHONPATH={SOURCE}"
    ) from error
if not os.path.realpath(fragility.__file__).startswith(
    os.path.realpath(SOURCE) + os.sep
):
    print(
        f"note: using the library installed at {os.path.dirname(fragility.__file__)}, "
        f"not this workflow's {SOURCE} (PYTHONPATH={SOURCE} selects it)",
        file=sys.stderr,
    )

from fragility.study import correlate, grid, outputs, selection  # noqa: E402
from fragility.report import aggregate  # noqa: E402
from fragility.runtime import job_label, job_log, naming_failures  # noqa: E402

SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
# the config files in the order they were merged: the `configfile:` of the Snakefile, then --configfile
CLI_CONFIGFILES = list(workflow.overwrite_configfiles or [])
CONFIGFILES = [
    f for f in workflow.configfiles if f not in CLI_CONFIGFILES
] + CLI_CONFIGFILES
grid.check_all(
    config,
    grid.read_config_files(CONFIGFILES),
    SCHEMA,
    fill_defaults=lambda c: validate(c, schema=SCHEMA),
)

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


def in_grid(pattern):
    """Input function: `pattern` filled with the job's wildcards, once they are checked to name a
    part of the study's grid (grid.check_wildcards): a path outside it fails at DAG build with a
    message listing what exists, instead of being planned."""

    def get(wildcards):
        grid.check_wildcards(config, dict(wildcards.items()))
        return pattern.format(**wildcards)

    return get


# Studies with `fuse_fit: true` compute a cell's model, test points, influence tables and drift
# control in one job (fused.smk); the split rules (train, test_points, influence, loo_drift) take
# every other study: SPLIT_STUDY is a study name that is not one of the fused ones.
FUSED_STUDIES = grid.fused_studies(config)
SPLIT_STUDY = (
    "(?!(?:{})(?![a-z0-9_]))[a-z0-9_]+".format(
        "|".join(re.escape(s) for s in FUSED_STUDIES)
    )
    if FUSED_STUDIES
    else "[a-z0-9_]+"
)


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
    grid.check_wildcards(config, {"study": study})
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
    """Group name of a CPU-only job when the cell's `resources.group` is true or lists `stage`.

    Stage "fit" joins train → test_points → influence → drift control of a cell into one cluster
    job; stage "loo" joins a cell's LOO chunks and noise repeat. `--group-components fit=N` (profiles/slurm) packs N
    cells into one submission. GPU jobs are never grouped: parallel members would add up GPUs.
    `group: [fit]` groups only the fit stage, leaving the LOO jobs to SLURM job arrays
    (`slurm-array-jobs` in profiles/slurm; a grouped job is never part of an array).
    """

    def get(wildcards):
        cfg = arch_cfg(wildcards).get("resources", {})
        group = cfg.get("group", False)
        stages = ("fit", "loo") if group is True else (group or ())
        if stage in stages and cfg.get(rule_key, {}).get("gpu", 0) == 0:
            return stage
        return None

    return get


def device():
    return config.get("device", "auto")


def repeat_settings(wildcards):
    return grid.repeat_settings(config, wildcards.study, wildcards.arch)


def loo_repeat_input(wildcards):
    """The repeat table of a cell, or nothing when `loo.repeats.count` is 0."""
    if repeat_settings(wildcards)["count"] == 0:
        return []
    return [os.path.join(CELL.format(**wildcards), "loo/repeat.parquet")]


def data_resource(wildcards, key, fallback):
    """`resources.data.<key>` of the study block (prepare_data has no architecture)."""
    block = grid.study_block(config, wildcards.study)
    return block.get("resources", {}).get("data", {}).get(key, fallback)


def check_imagenet_job(wildcards, output):
    """Adapter for rule check_imagenet (runs inside the Snakemake process)."""
    from fragility.data import files

    dataset_cfg = grid.study_block(config, wildcards.study)["datasets"][
        wildcards.dataset
    ]
    return files.check_imagenet_folders(
        dataset_cfg, config.get("data_dir", "data"), output[0]
    )


def correlate_job(input, output, params):
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


def aggregate_job(input, output, params):
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
        metric_cells=params.metric_cells,
        diagnostic_cells=params.diagnostic_cells,
    )


# `run:` jobs run in threads of the Snakemake process (profiles/default: force-use-threads); they
# take turns, since pyplot (figures) is not thread-safe.
IN_PROCESS_LOCK = threading.Lock()


def logged(log, done, function, *args, label=None, **kwargs):
    """Call `function` inside the Snakemake process, passing it the logger when it takes `log`;
    `done` (a string, or a function of the result) goes to the job's log, or the traceback; a
    failure is raised naming `label` (runtime.job_label: the rule and the cell). One such call at
    a time (IN_PROCESS_LOCK)."""
    with IN_PROCESS_LOCK, job_log(log[0], label) as logger:
        if "log" in inspect.signature(function).parameters:
            kwargs["log"] = logger
        result = function(*args, **kwargs)
        logger(done(result) if callable(done) else done)
    return result


def yaml_dump(value):
    import yaml

    return yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=100)


# The verdict (rules verdict and verdict_page; study/verdict.py, report/page.py)


def verdict_correlations(wildcards):
    """Every ground truth's correlations: truths_correlations.parquet where the study scores more
    than LOO (it holds LOO's rows too), else correlations.parquet."""
    name = (
        "truths_correlations.parquet"
        if truth_outputs(wildcards.study)
        else "correlations.parquet"
    )
    return os.path.join(RESULTS, wildcards.study, name)


def verdict_page_job(wildcards, input, output, params):
    """Adapter of the verdict_page step (runs inside the Snakemake process)."""
    from fragility.report.page import write_index

    write_index(
        wildcards.study,
        input.verdict,
        input.best,
        output[0],
        list(zip(input.figures, params.captions)),
        params.options,
        [tuple(link) for link in params.links],
    )


def selecting_estimators(w):
    """The estimators whose tables `select` reads (selection.tables_read)."""
    by = arch_cfg(w)["select"]["by"]
    return selection.tables_read(by, list(grid.estimators(config, w.study, w.arch)))


def selection_inputs(w):
    """The tables of `selecting_estimators`."""
    return [
        os.path.join(in_grid(CELL)(w), f"influence/{name}.parquet")
        for name in selecting_estimators(w)
    ]


def select_job(rule, wildcards, input, output, params, log):
    """Adapter of the select checkpoint (runs inside the Snakemake process)."""
    logged(
        log,
        "selection written",
        selection.select_by,
        dict(zip(params.estimators, input)),
        params.by,
        params.rules,
        output[0],
        label=job_label(rule, wildcards),
        random=params.random,
        seed=int(wildcards.seed),
    )


def plan_estimators(w):
    """The estimators whose Δ̂ the truths plan reads (selection.tables_read, `plan`)."""
    by = arch_cfg(w)["select"]["by"]
    return selection.tables_read(
        by, list(grid.estimators(config, w.study, w.arch)), plan=True
    )
