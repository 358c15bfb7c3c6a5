# Ground truths beyond leave-one-out (src/fragility/study/targets.py), enabled per study with
# `targets: [loo, pbrf, groups, lds]`: PBRF re-trainings of the selected points, group removals and
# LDS subsets, chunked and batched like `loo_chunk` (same resources, checkpoints), then scored per
# cell (`targets.parquet`, column `truth`) and per study (`targets.csv`, one figure).


checkpoint targets_plan:
    input:
        data=in_grid(os.path.join(RESULTS, "{study}/{dataset}/data.pt")),
        influence=lambda w: os.path.join(
            CELL.format(**w), f"influence/{plan_estimator(w)}.parquet"
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
        model=in_grid(os.path.join(CELL, "model.pt")),
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
        model=in_grid(os.path.join(CELL, "model.pt")),
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
        logged(
            log,
            "target correlations written",
            correlate_targets_job,
            input,
            output,
            params,
            label=job_label(rule, wildcards),
        )


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
        logged(log, "ground-truth tables written", targets_summary_job, input, output)


rule table1_targets:
    input:
        os.path.join(RESULTS, "{study}/targets_correlations.parquet"),
    output:
        os.path.join(RESULTS, "{study}/table1_targets.csv"),
    log:
        os.path.join(RESULTS, "logs/{study}/table1_targets.log"),
    wildcard_constraints:
        study=kind_constraint("table1"),
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        options=lambda w: tables.table1_options(config, w.study),
    run:
        logged(
            log,
            "Table 1 by ground truth written",
            tables.write_table1_targets,
            input[0],
            output[0],
            **params.options,
        )


localrules:
    targets_plan,
    correlate_targets,
    targets_summary,
    table1_targets,
