rule influence:
    input:
        model=CELL + "/model.pt",
        data=RESULTS + "/{study}/{dataset}/data.pt",
        test_points=CELL + "/test_points.json",
    output:
        table=CELL + "/influence/{estimator}.parquet",
        diagnostics=CELL + "/influence/{estimator}.json",
    log:
        LOGS + "/influence_{estimator}.log",
    benchmark:
        BENCH + "/influence_{estimator}.tsv"
    group:
        cluster_group("fit", "influence")
    threads: cluster_threads("influence")
    resources:
        **cluster_resources("influence"),
    params:
        method=lambda w: grid.estimators(config, w.study, w.arch)[w.estimator],
        influence=lambda w: arch_cfg(w)["influence"],
        decay=decay_of,
        device=device(),
    script:
        "../scripts/influence.py"


checkpoint select:
    input:
        lambda w: CELL.format(**w) + f"/influence/{arch_cfg(w)['select']['by']}.parquet",
    output:
        CELL + "/selected.json",
    log:
        LOGS + "/select.log",
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        rules=lambda w: arch_cfg(w)["select"]["rules"],
    run:
        pipeline.select(input[0], params.rules, output[0])
        file_logger(log[0])("selection written")


localrules:
    select,
