# Functions of the ground-truth rules (targets.smk): which targets a cell scores, its chunks, the
# inputs of its correlation job, a study's outputs, and the adapters of the `run:` rules.
from fragility.io import read_json  # noqa: E402
from fragility.study import targets as target_defs  # noqa: E402


def targets_enabled(wildcards_or_study):
    """The cell's `targets` list, or for a study name the union over its architectures (a
    per-architecture `overrides.<arch>.targets` may add some)."""
    if isinstance(wildcards_or_study, str):
        return target_defs.study_targets_enabled(config, wildcards_or_study)
    return target_defs.enabled_targets(arch_cfg(wildcards_or_study))


def target_settings(name, unused=()):
    """Params: a target block (pbrf, groups, lds) of the cell over its defaults."""
    return lambda w: {
        k: v
        for k, v in target_defs.settings(arch_cfg(w), name).items()
        if k not in unused
    }


def pbrf_chunks(wildcards):
    """PBRF re-trains the points LOO re-trains (selected.json), in chunks of `pbrf.chunk_size`
    (default loo.chunk_size)."""
    indices = grid.read_selected(checkpoints.select.get(**wildcards).output[0])
    cfg = arch_cfg(wildcards)
    size = target_defs.settings(cfg, "pbrf").get("chunk_size", cfg["loo"]["chunk_size"])
    return [
        os.path.join(CELL.format(**wildcards), f"targets/pbrf/chunk{k:04d}.parquet")
        for k in range(target_defs.chunk_count(len(indices), size))
    ]


def removal_chunks(kind):
    """The chunk tables of the group or LDS re-trainings, known once the plan is written."""

    def get(wildcards):
        plan = checkpoints.targets_plan.get(**wildcards).output[0]
        sets = target_defs.plan_sets(read_json(plan), kind)  # a clear error if corrupt
        size = target_defs.settings(arch_cfg(wildcards), kind)["chunk_size"]
        return [
            os.path.join(
                CELL.format(**wildcards), f"targets/{kind}/chunk{k:04d}.parquet"
            )
            for k in range(target_defs.chunk_count(len(sets), size))
        ]

    return get


def correlate_targets_input(wildcards):
    enabled = targets_enabled(wildcards)
    cell = CELL.format(**wildcards)
    out = {
        "influence": [
            os.path.join(cell, f"influence/{name}.parquet")
            for name in grid.estimators(config, wildcards.study, wildcards.arch)
        ],
        "test_points": os.path.join(cell, "test_points.json"),
        "metrics": os.path.join(cell, "train_metrics.json"),
        "selected": os.path.join(cell, "selected.json"),
    }
    if "pbrf" in enabled:
        out["pbrf"] = pbrf_chunks(wildcards)
        out["loo_rows"] = os.path.join(cell, "rows.parquet")  # LOO always runs
    if "groups" in enabled or "lds" in enabled:
        out["plan"] = os.path.join(cell, "targets/plan.json")
    for kind in ("groups", "lds"):
        if kind in enabled:
            out[kind] = removal_chunks(kind)(wildcards)
    return out


def target_outputs(study):
    """A study's outputs of the other ground truths ([] when `targets` is only loo)."""
    if set(targets_enabled(study)) <= {"loo"}:
        return []
    outputs = [
        f"{RESULTS}/{study}/targets.csv",
        f"{RESULTS}/{study}/targets_correlations.parquet",
        f"{RESULTS}/{study}/figures/targets/correlation_by_target.png",
    ]
    if study_kind(study) == "table1":
        outputs.append(f"{RESULTS}/{study}/table1_targets.csv")
    return outputs


def cell_target_tables(study):
    """Every cell's `targets.parquet` of a study that scores more than LOO."""
    return [
        os.path.join(grid.cell_dir(c, RESULTS), "targets.parquet")
        for c in grid.cells(config, study)
        if set(target_defs.enabled_targets(grid.arch_config(config, study, c["arch"])))
        - {"loo"}
    ]


def correlate_targets_job(input, output, params):
    """Adapter of the correlate_targets step (runs inside the Snakemake process)."""
    target_defs.correlate_targets(
        params.cell,
        dict(zip(params.estimators, input.influence)),
        input.test_points,
        input.metrics,
        output[0],
        selection_path=input.selected,
        pbrf_paths=list(input.get("pbrf", [])),
        plan_path=input.get("plan"),
        group_paths=list(input.get("groups", [])),
        lds_paths=list(input.get("lds", [])),
        loo_rows_path=input.get("loo_rows"),
        options=params.correlation,
    )


def targets_summary_job(input, output):
    """Adapter of the targets_summary step (the long and wide tables, and the figure)."""
    from fragility.report.figures import correlation_by_target

    frame = target_defs.study_targets(
        list(input.cells), input.loo, output.correlations, output.table
    )
    correlation_by_target(frame, os.path.dirname(output.figure))
