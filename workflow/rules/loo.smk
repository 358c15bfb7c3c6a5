def loo_chunks(wildcards):
    """The re-training chunks of a cell, known once its `select` checkpoint has run."""
    selected = checkpoints.select.get(**wildcards).output[0]
    indices = grid.read_selected(selected)
    size = arch_cfg(wildcards)["loo"]["chunk_size"]
    n_chunks = (len(indices) + size - 1) // size
    return [
        CELL.format(**wildcards) + f"/loo/chunk{k:04d}.parquet" for k in range(n_chunks)
    ]


rule loo_chunk:
    input:
        model=CELL + "/model.pt",
        data=RESULTS + "/{study}/{dataset}/data.pt",
        test_points=CELL + "/test_points.json",
        selected=CELL + "/selected.json",
        drift_theta=CELL + "/loo/drift_theta.pt",
    output:
        CELL + "/loo/chunk{chunk}.parquet",
    log:
        LOGS + "/loo_chunk{chunk}.log",
    benchmark:
        BENCH + "/loo_chunk{chunk}.tsv"
    group:
        cluster_group("loo", "loo")
    threads: cluster_threads("loo")
    resources:
        **cluster_resources("loo"),
    params:
        loo=lambda w: arch_cfg(w)["loo"],
        train=lambda w: arch_cfg(w)["train"],
        order_seed=lambda w: int(w.seed) + 7919,
        device=device(),
        checkpoint=lambda w: CELL.format(**w) + f"/loo/chunk{w.chunk}.checkpoint.pt",
    script:
        "../scripts/loo.py"


rule loo_drift:
    input:
        model=CELL + "/model.pt",
        data=RESULTS + "/{study}/{dataset}/data.pt",
        test_points=CELL + "/test_points.json",
    output:
        table=CELL + "/loo/drift.parquet",
        theta=CELL + "/loo/drift_theta.pt",
    log:
        LOGS + "/loo_drift.log",
    benchmark:
        BENCH + "/loo_drift.tsv"
    group:
        cluster_group("fit", "loo")
    threads: cluster_threads("loo")
    resources:
        **cluster_resources("loo"),
    params:
        loo=lambda w: arch_cfg(w)["loo"],
        train=lambda w: arch_cfg(w)["train"],
        order_seed=lambda w: int(w.seed) + 7919,
        device=device(),
        checkpoint=lambda w: CELL.format(**w) + "/loo/drift.checkpoint.pt",
    script:
        "../scripts/loo.py"
