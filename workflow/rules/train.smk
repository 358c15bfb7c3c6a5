rule train:
    input:
        data=in_grid(os.path.join(RESULTS, "{study}/{dataset}/data.pt")),
    output:
        model=os.path.join(CELL, "model.pt"),
        metrics=os.path.join(CELL, "train_metrics.json"),
    log:
        os.path.join(LOGS, "train.log"),
    benchmark:
        os.path.join(BENCH, "train.tsv")
    wildcard_constraints:
        study=SPLIT_STUDY,  # fused studies: rule fit_<study> (fused.smk)
    group:
        cluster_group("fit", "train")
    conda:
        CONDA_ENV
    threads: cluster_threads("train")
    resources:
        **cluster_resources("train"),
    params:
        train=settings_of("train"),
        task=lambda w: arch_cfg(w).get("task", "cross_entropy"),
        factory=lambda w: grid.model_factory(config, w.arch),
        dtype=lambda w: arch_cfg(w).get("dtype", "float32"),
        decay=decay_of,
        device=device(),
        checkpoint=lambda w: os.path.join(
            grid.cell_dir(cell_of(w), RESULTS), "train_checkpoint.pt"
        ),
    script:
        "../scripts/train.py"


rule test_points:
    input:
        model=in_grid(os.path.join(CELL, "model.pt")),
        data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
    output:
        os.path.join(CELL, "test_points.json"),
    log:
        os.path.join(LOGS, "test_points.log"),
    wildcard_constraints:
        study=SPLIT_STUDY,  # fused studies: rule fit_<study> (fused.smk)
    group:
        cluster_group("fit", "influence")
    conda:
        CONDA_ENV
    threads: cluster_threads("influence")
    resources:
        **cluster_resources("influence"),  # it runs the model over the whole test set, like influence
    params:
        specs=lambda w: arch_cfg(w)["test_points"],
        device=device(),
    script:
        "../scripts/test_points.py"
