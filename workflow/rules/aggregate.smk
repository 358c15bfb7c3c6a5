# Light steps run inside the Snakemake process (`run:`), so they cost no interpreter start-up.


rule correlate:
    input:
        influence=lambda w: [
            os.path.join(in_grid(CELL)(w), f"influence/{name}.parquet")
            for name in grid.estimators(config, w.study, w.arch)
        ],
        test_points=os.path.join(CELL, "test_points.json"),
        selected=os.path.join(CELL, "selected.json"),
        chunks=loo_chunks,
        drift=os.path.join(CELL, "loo/drift.parquet"),
        repeat=loo_repeat_input,
        metrics=os.path.join(CELL, "train_metrics.json"),
    output:
        rows=os.path.join(CELL, "rows.parquet"),
        correlations=os.path.join(CELL, "correlations.parquet"),
    log:
        os.path.join(LOGS, "correlate.log"),
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
            "correlations written",
            correlate_job,
            input,
            output,
            params,
            label=job_label(rule, wildcards),
        )


rule aggregate:
    input:
        correlations=lambda w: cell_paths(w.study, "correlations.parquet"),
        rows=lambda w: cell_paths(w.study, "rows.parquet"),
        metrics=lambda w: cell_paths(w.study, "train_metrics.json"),
        diagnostics=lambda w: [
            os.path.join(grid.cell_dir(c, RESULTS), f"influence/{name}.json")
            for c in grid.cells(config, w.study)
            for name in grid.estimators(config, w.study, c["arch"])
        ],
    output:
        correlations=os.path.join(RESULTS, "{study}/correlations.parquet"),
        summary=os.path.join(RESULTS, "{study}/summary.csv"),
        rows=os.path.join(RESULTS, "{study}/rows.parquet"),
        training=os.path.join(RESULTS, "{study}/training.csv"),
        diagnostics=os.path.join(RESULTS, "{study}/influence_diagnostics.csv"),
        by_seed=os.path.join(RESULTS, "{study}/summary_by_seed.csv"),
        noise=os.path.join(RESULTS, "{study}/noise.csv"),
        estimators=os.path.join(RESULTS, "{study}/estimators.csv"),
    log:
        os.path.join(RESULTS, "logs/{study}/aggregate.log"),
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        metric_cells=lambda w: [
            grid.cell_keys(config, c) for c in grid.cells(config, w.study)
        ],
        diagnostic_cells=lambda w: [
            grid.cell_keys(config, c)
            for c in grid.cells(config, w.study)
            for name in grid.estimators(config, w.study, c["arch"])
        ],
        exact=lambda w: outputs.exact_estimators(config, w.study),
        correlation=lambda w: grid.study_block(config, w.study).get("correlation", {}),
    run:
        logged(
            log,
            "study tables written",
            aggregate_job,
            input,
            output,
            params,
            label=job_label(rule, wildcards),
        )


localrules:
    correlate,
    aggregate,


rule verdict:
    input:
        correlations=verdict_correlations,
        rows=os.path.join(RESULTS, "{study}/rows.parquet"),
        repeats=lambda w: [
            os.path.join(grid.cell_dir(c, RESULTS), "loo/repeat.parquet")
            for c in outputs.repeat_cells(config, w.study)
        ],
    output:
        verdict=os.path.join(RESULTS, "{study}/verdict.csv"),
        best=os.path.join(RESULTS, "{study}/verdict_best.csv"),
    log:
        os.path.join(RESULTS, "logs/{study}/verdict.log"),
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        options=lambda w: grid.study_block(config, w.study).get("verdict", {}),
        repeat_cells=lambda w: [
            grid.cell_keys(config, c) for c in outputs.repeat_cells(config, w.study)
        ],
        deterministic=lambda w: outputs.deterministic_pairs(config, w.study),
    run:
        from fragility.study.verdict import write_verdict

        logged(
            log,
            lambda table: f"{len(table)} verdict rows written",
            write_verdict,
            input.correlations,
            input.rows,
            output.verdict,
            output.best,
            options=params.options,
            repeat_paths=list(input.repeats),
            repeat_cells=params.repeat_cells,
            deterministic={tuple(pair): True for pair in params.deterministic},
        )


localrules:
    verdict,
