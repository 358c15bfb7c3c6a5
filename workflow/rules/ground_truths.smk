# Ground truths (src/fragility/truths/), enabled per study with `truths: [loo, pbrf, groups, lds]`:
# leave-one-out, PBRF re-trainings of the selected points, group removals and LDS subsets, each
# chunked and batched by one rule definition; the truths beyond LOO are scored per cell
# (`truths.parquet`, column `truth`) and per study (`truths.csv`, one figure).


checkpoint truths_plan:
    input:
        data=in_grid(os.path.join(RESULTS, "{study}/{dataset}/data.pt")),
        influence=lambda w: [
            os.path.join(CELL.format(**w), f"influence/{name}.parquet")
            for name in plan_estimators(w)
        ],
    output:
        os.path.join(CELL, "truths/plan.json"),
    log:
        os.path.join(LOGS, "truths_plan.log"),
    conda:
        CONDA_ENV
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        settings=planned_settings,
        estimators=plan_estimators,
        seed_keys=lambda w: [w.study, w.dataset, w.arch, w.decay, int(w.seed)],
    script:
        "../scripts/truths_plan.py"


# One re-training rule per truth, `<truth>_chunk` (loo_chunk, pbrf_chunk, groups_chunk,
# lds_chunk): one chunk of the truth's sets, batched (truths/retrain.py), with the resources,
# grouping and minibatch order (grid.loo_order_seed) of every re-training.
for _name in truth_registry.names():
    _truth = truth_registry.get(_name)

    rule:
        name:
            f"{_name}_chunk"
        input:
            **{key: os.path.join(CELL, path) for key, path in _truth.inputs.items()},
            model=in_grid(os.path.join(CELL, "model.pt")),
            data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
            test_points=os.path.join(CELL, "test_points.json"),
        output:
            os.path.join(CELL, _truth.folder(), "chunk{chunk}.parquet"),
        log:
            os.path.join(LOGS, f"{_name}_chunk{{chunk}}.log"),
        benchmark:
            os.path.join(BENCH, f"{_name}_chunk{{chunk}}.tsv")
        group:
            cluster_group("loo", "loo")
        conda:
            CONDA_ENV
        threads: cluster_threads("loo")
        resources:
            **cluster_resources("loo"),
        params:
            truth=_name,
            settings=truth_settings(_name),
            loo=settings_of("loo"),
            train=settings_of("train"),
            extra=truth_extra(_name),
            order_seed=lambda w: grid.loo_order_seed(w.seed),
            device=device(),
            checkpoint=lambda w, output: output[0].replace(".parquet", ".checkpoint.pt"),
        script:
            "../scripts/retrain_chunk.py"


rule correlate_truths:
    input:
        unpack(correlate_truths_input),
    output:
        os.path.join(CELL, "truths.parquet"),
    log:
        os.path.join(LOGS, "correlate_truths.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        estimators=lambda w: list(grid.estimators(config, w.study, w.arch)),
        truths=truths_enabled,
        cell=lambda w: {**cell_of(w), "decay": decay_of(w), "seed": int(w.seed)},
        correlation=lambda w: arch_cfg(w).get("correlation", {}),
    run:
        logged(
            log,
            "target correlations written",
            correlate_truths_job,
            input,
            output,
            params,
            label=job_label(rule, wildcards),
        )


rule truths_summary:
    input:
        cells=lambda w: cell_truth_tables(w.study),
        loo=os.path.join(RESULTS, "{study}/correlations.parquet"),
    output:
        correlations=os.path.join(RESULTS, "{study}/truths_correlations.parquet"),
        table=report(
            os.path.join(RESULTS, "{study}/truths.csv"),
            caption="../report/truths.rst",
            category="Study {study}",
            subcategory="Ground truths",
        ),
        figure=report(
            os.path.join(RESULTS, "{study}/figures/truths/correlation_by_truth.png"),
            caption="../report/correlation_by_truth.rst",
            category="Study {study}",
            subcategory="Ground truths",
        ),
    log:
        os.path.join(RESULTS, "logs/{study}/truths_summary.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    run:
        logged(log, "ground-truth tables written", truths_summary_job, input, output)


rule table1_truths:
    input:
        os.path.join(RESULTS, "{study}/truths_correlations.parquet"),
    output:
        os.path.join(RESULTS, "{study}/table1_truths.csv"),
    log:
        os.path.join(RESULTS, "logs/{study}/table1_truths.log"),
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
            tables.write_table1_truths,
            input[0],
            output[0],
            **params.options,
        )


localrules:
    truths_plan,
    correlate_truths,
    truths_summary,
    table1_truths,
