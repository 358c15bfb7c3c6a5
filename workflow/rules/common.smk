import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from fragility import grid, pipeline, report_tables  # noqa: E402
from fragility.runtime import file_logger  # noqa: E402


validate(config, schema="../schemas/config.schema.yaml")
grid.check_config(config)

RESULTS = "results"
CELL = RESULTS + "/{study}/{dataset}/{arch}/wd{decay}/seed{seed}"
LOGS = RESULTS + "/logs/{study}/{dataset}/{arch}/wd{decay}/seed{seed}"
BENCH = RESULTS + "/benchmarks/{study}/{dataset}/{arch}/wd{decay}/seed{seed}"


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


def decay_of(wildcards):
    return grid.decay_value(config, wildcards.study, wildcards.decay)


def cell_paths(study, pattern):
    """`pattern` (relative to a cell directory) for every cell of `study`."""
    return [grid.cell_dir(c, RESULTS) + "/" + pattern for c in grid.cells(config, study)]




def res(rule_key, key, fallback):
    """A resource value for `rule_key` from the merged config, grown with the attempt number."""

    def get(wildcards, attempt):
        if "study" not in wildcards.keys():
            return fallback
        value = arch_cfg(wildcards).get("resources", {}).get(rule_key, {}).get(key, fallback)
        return value * attempt if key in ("mem_mb", "runtime") else value

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
