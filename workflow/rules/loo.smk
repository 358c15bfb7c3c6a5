# loo_chunk: ground_truths.smk (one rule definition for every truth's chunks)


rule loo_drift:
    input:
        model=in_grid(os.path.join(CELL, "model.pt")),
        data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
        test_points=os.path.join(CELL, "test_points.json"),
    output:
        table=os.path.join(CELL, "loo/drift.parquet"),
        theta=os.path.join(CELL, "loo/drift_theta.pt"),
    log:
        os.path.join(LOGS, "loo_drift.log"),
    benchmark:
        os.path.join(BENCH, "loo_drift.tsv")
    wildcard_constraints:
        study=SPLIT_STUDY,  # fused studies: rule fit_<study> (fused.smk)
    group:
        cluster_group("fit", "loo")
    conda:
        CONDA_ENV
    threads: cluster_threads("loo")
    resources:
        **cluster_resources("loo"),
    params:
        loo=settings_of("loo", unused=("chunk_size",)),
        train=settings_of("train"),
        order_seed=lambda w: grid.loo_order_seed(w.seed),
        device=device(),
        checkpoint=lambda w: os.path.join(CELL.format(**w), "loo/drift.checkpoint.pt"),
    script:
        "../scripts/loo_drift.py"
