# Ground truths beyond leave-one-out (src/fragility/study/targets.py), enabled per study with
# `targets: [loo, pbrf, groups, lds]`: PBRF re-trainings of the selected points, group removals and
# LDS subsets, chunked and batched like `loo_chunk` (same resources, checkpoints), then scored per
# cell (`targets.parquet`, column `truth`) and per study (`targets.csv`, one figure).
import json

from fragility.study import targets as target_defs  # noqa: E402


def targets_enabled(wildcards_or_study):
    """The cell's `targets` list, or for a study name the union over its architectures (a
    per-architecture `overrides.<arch>.targets` may add some)."""
    if isinstance(wildcards_or_study, str):
        study = wildcards_or_study
        found = []
        for arch in grid.study_block(config, study)["architectures"]:
            for name in target_defs.enabled_targets(
                grid.arch_config(config, study, arch)
            ):
                if name not in found:
                    found.append(name)
        return found
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
        with open(plan) as handle:
            sets = target_defs.plan_sets(json.load(handle), kind)
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
    if grid.study_block(config, study).get("kind") == "table1":
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


checkpoint targets_plan:
    input:
        data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
        influence=lambda w: os.path.join(
            CELL.format(**w), f"influence/{arch_cfg(w)['select']['by']}.parquet"
        ),
    output:
        os.path.join(CELL, "targets/plan.json"),
    log:
        os.path.join(LOGS, "targets_plan.log"),
    conda:
        CONDA_ENV
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        targets=targets_enabled,
        groups=target_settings("groups", unused=("chunk_size",)),
        lds=target_settings(
            "lds", unused=("chunk_size", "start", "steps", "copies_per_pass")
        ),
        seed_keys=lambda w: [w.study, w.dataset, w.arch, w.decay, int(w.seed)],
    script:
        "../scripts/targets_plan.py"


rule pbrf_chunk:
    input:
        model=os.path.join(CELL, "model.pt"),
        data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
        test_points=os.path.join(CELL, "test_points.json"),
        selected=os.path.join(CELL, "selected.json"),
    output:
        os.path.join(CELL, "targets/pbrf/chunk{chunk}.parquet"),
    log:
        os.path.join(LOGS, "pbrf_chunk{chunk}.log"),
    benchmark:
        os.path.join(BENCH, "pbrf_chunk{chunk}.tsv")
    group:
        cluster_group("loo", "loo")
    conda:
        CONDA_ENV
    threads: cluster_threads("loo")
    resources:
        **cluster_resources("loo"),
    params:
        pbrf=target_settings("pbrf"),
        loo=settings_of("loo"),
        train=settings_of("train"),
        damping=damping_of,
        order_seed=lambda w: int(w.seed) + 7919,
        device=device(),
        checkpoint=lambda w: os.path.join(
            CELL.format(**w), f"targets/pbrf/chunk{w.chunk}.checkpoint.pt"
        ),
    script:
        "../scripts/pbrf.py"


rule removal_chunk:
    input:
        model=os.path.join(CELL, "model.pt"),
        data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
        test_points=os.path.join(CELL, "test_points.json"),
        plan=os.path.join(CELL, "targets/plan.json"),
    output:
        os.path.join(CELL, "targets/{kind}/chunk{chunk}.parquet"),
    log:
        os.path.join(LOGS, "{kind}_chunk{chunk}.log"),
    benchmark:
        os.path.join(BENCH, "{kind}_chunk{chunk}.tsv")
    wildcard_constraints:
        kind="groups|lds",
    group:
        cluster_group("loo", "loo")
    conda:
        CONDA_ENV
    threads: cluster_threads("loo")
    resources:
        **cluster_resources("loo"),
    params:
        settings=lambda w: target_defs.settings(arch_cfg(w), w.kind),
        loo=settings_of("loo", unused=("chunk_size",)),
        train=settings_of("train"),
        order_seed=lambda w: int(w.seed) + 7919,
        device=device(),
        checkpoint=lambda w: os.path.join(
            CELL.format(**w), f"targets/{w.kind}/chunk{w.chunk}.checkpoint.pt"
        ),
    script:
        "../scripts/removal_sets.py"


rule correlate_targets:
    input:
        unpack(correlate_targets_input),
    output:
        os.path.join(CELL, "targets.parquet"),
    log:
        os.path.join(LOGS, "correlate_targets.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        estimators=lambda w: list(grid.estimators(config, w.study, w.arch)),
        cell=lambda w: {**cell_of(w), "decay": decay_of(w), "seed": int(w.seed)},
        correlation=lambda w: arch_cfg(w).get("correlation", {}),
    run:
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
        file_logger(log[0])("target correlations written")


rule targets_summary:
    input:
        cells=lambda w: cell_target_tables(w.study),
        loo=os.path.join(RESULTS, "{study}/correlations.parquet"),
    output:
        correlations=os.path.join(RESULTS, "{study}/targets_correlations.parquet"),
        table=report(
            os.path.join(RESULTS, "{study}/targets.csv"),
            caption="../report/targets.rst",
            category="Study {study}",
            subcategory="Ground truths",
        ),
        figure=report(
            os.path.join(RESULTS, "{study}/figures/targets/correlation_by_target.png"),
            caption="../report/correlation_by_target.rst",
            category="Study {study}",
            subcategory="Ground truths",
        ),
    log:
        os.path.join(RESULTS, "logs/{study}/targets_summary.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    run:
        from fragility.report.figures import correlation_by_target

        frame = target_defs.study_targets(
            list(input.cells), input.loo, output.correlations, output.table
        )
        correlation_by_target(frame, os.path.dirname(output.figure))
        file_logger(log[0])("ground-truth tables written")


rule table1_targets:
    input:
        os.path.join(RESULTS, "{study}/targets_correlations.parquet"),
    output:
        os.path.join(RESULTS, "{study}/table1_targets.csv"),
    log:
        os.path.join(RESULTS, "logs/{study}/table1_targets.log"),
    wildcard_constraints:
        study="|".join(TABLE1_STUDIES) or "(?!)",
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        options=lambda w: tables.table1_options(config, w.study),
    run:
        tables.write_table1_targets(input[0], output[0], **params.options)
        file_logger(log[0])("Table 1 by ground truth written")


localrules:
    targets_plan,
    correlate_targets,
    targets_summary,
    table1_targets,
