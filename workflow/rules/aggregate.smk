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
        metrics=CELL + "/train_metrics.json",
    output:
        rows=CELL + "/rows.parquet",
        correlations=CELL + "/correlations.parquet",
    params:
        estimators=lambda w: list(grid.estimators(config, w.study, w.arch)),
        cell=lambda w: {**cell_of(w), "decay": decay_of(w), "seed": int(w.seed)},
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
        )
        file_logger(log[0])("study tables written")


localrules:
    correlate,
    aggregate,
