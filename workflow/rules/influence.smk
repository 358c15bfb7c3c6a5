rule influence:
    input:
        model=CELL + "/model.pt",
        data=RESULTS + "/{study}/{dataset}/data.pt",
        test_points=CELL + "/test_points.json",
    output:
        table=CELL + "/influence/{estimator}.parquet",
        diagnostics=CELL + "/influence/{estimator}.json",
    params:
        method=lambda w: grid.estimators(config, w.study, w.arch)[w.estimator],
        influence=lambda w: arch_cfg(w)["influence"],
        decay=decay_of,
        device=device(),
    log:
        LOGS + "/influence_{estimator}.log",
    benchmark:
        BENCH + "/influence_{estimator}.tsv"
    threads: 1
    resources:
        mem_mb=res("influence", "mem_mb", 4000),
        runtime=res("influence", "runtime", 60),
        gpu=res("influence", "gpu", 0),
    script:
        "../scripts/influence.py"


checkpoint select:
    input:
        lambda w: CELL.format(**w) + f"/influence/{arch_cfg(w)['select']['by']}.parquet",
    output:
        CELL + "/selected.json",
    params:
        rules=lambda w: arch_cfg(w)["select"]["rules"],
    log:
        LOGS + "/select.log",
    resources:
        mem_mb=1000,
        runtime=5,
    run:
        pipeline.select(input[0], params.rules, output[0])
        file_logger(log[0])("selection written")


localrules:
    select,
