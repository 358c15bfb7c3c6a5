# Light steps run inside the Snakemake process (`run:`), so they cost no interpreter start-up.


rule correlate:
    input:
        influence=lambda w: [
            CELL.format(**w) + f"/influence/{name}.parquet"
            for name in grid.estimators(config, w.study, w.arch)
        ],
        test_points=CELL + "/test_points.json",
        selected=CELL + "/selected.json",
        chunks=loo_chunks,
        drift=CELL + "/loo/drift.parquet",
        repeat=loo_repeat_input,
        metrics=CELL + "/train_metrics.json",
    output:
        rows=CELL + "/rows.parquet",
        correlations=CELL + "/correlations.parquet",
    params:
        estimators=lambda w: list(grid.estimators(config, w.study, w.arch)),
        cell=lambda w: {**cell_of(w), "decay": decay_of(w), "seed": int(w.seed)},
        correlation=lambda w: arch_cfg(w).get("correlation", {}),
    log:
        LOGS + "/correlate.log",
    resources:
        mem_mb=2000,
        runtime=10,
    run:
        pipeline.correlate_cell(
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


rule aggregate:
    input:
        correlations=lambda w: cell_paths(w.study, "correlations.parquet"),
        rows=lambda w: cell_paths(w.study, "rows.parquet"),
        metrics=lambda w: cell_paths(w.study, "train_metrics.json"),
        diagnostics=lambda w: [
            grid.cell_dir(c, RESULTS) + f"/influence/{name}.json"
            for c in grid.cells(config, w.study)
            for name in grid.estimators(config, w.study, c["arch"])
        ],
    output:
        correlations=RESULTS + "/{study}/correlations.parquet",
        summary=RESULTS + "/{study}/summary.csv",
        rows=RESULTS + "/{study}/rows.parquet",
        training=RESULTS + "/{study}/training.csv",
        diagnostics=RESULTS + "/{study}/influence_diagnostics.csv",
        by_seed=RESULTS + "/{study}/summary_by_seed.csv",
        noise=RESULTS + "/{study}/noise.csv",
        estimators=RESULTS + "/{study}/estimators.csv",
    params:
        exact=lambda w: exact_estimators(w.study),
    log:
        RESULTS + "/logs/{study}/aggregate.log",
    resources:
        mem_mb=4000,
        runtime=10,
    run:
        report_tables.aggregate_study(
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
        )
        file_logger(log[0])("study tables written")


localrules:
    correlate,
    aggregate,
