rule influence:
    input:
        model=in_grid(os.path.join(CELL, "model.pt")),
        data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
        test_points=os.path.join(CELL, "test_points.json"),
        # the other trained models an estimator requires ("several_models": the other seeds)
        models=lambda w: [
            os.path.join(grid.cell_dir(c, RESULTS), "model.pt")
            for c in grid.estimator_model_cells(config, dict(w.items()), w.estimator)
        ],
    output:
        table=os.path.join(CELL, "influence/{estimator}.parquet"),
        diagnostics=os.path.join(CELL, "influence/{estimator}.json"),
    log:
        os.path.join(LOGS, "influence_{estimator}.log"),
    benchmark:
        os.path.join(BENCH, "influence_{estimator}.tsv")
    wildcard_constraints:
        study=SPLIT_STUDY,  # fused studies: rule fit_<study> (fused.smk)
    group:
        cluster_group("fit", "influence")
    conda:
        CONDA_ENV
    threads: cluster_threads("influence")
    resources:
        **cluster_resources("influence"),
    params:
        method=lambda w: grid.estimators(config, w.study, w.arch)[w.estimator],
        damping=damping_of,
        chunks=lambda w: grid.influence_chunks(config, w.study, w.arch),
        device=device(),
    script:
        "../scripts/influence.py"


checkpoint select:
    input:
        selection_inputs,
    output:
        os.path.join(CELL, "selected.json"),
    log:
        os.path.join(LOGS, "select.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        rules=lambda w: arch_cfg(w)["select"]["rules"],
        by=lambda w: arch_cfg(w)["select"]["by"],
        random=lambda w: arch_cfg(w)["select"].get("random", 0),
        estimators=selecting_estimators,
    run:
        select_job(rule, wildcards, input, output, params, log)


localrules:
    select,
