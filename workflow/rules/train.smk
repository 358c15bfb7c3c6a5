rule train:
    input:
        data=RESULTS + "/{study}/{dataset}/data.pt",
    output:
        model=CELL + "/model.pt",
        metrics=CELL + "/train_metrics.json",
    log:
        LOGS + "/train.log",
    benchmark:
        BENCH + "/train.tsv"
    group:
        cluster_group("fit", "train")
    threads: cluster_threads("train")
    resources:
        **cluster_resources("train"),
    params:
        train=lambda w: arch_cfg(w)["train"],
        dtype=lambda w: arch_cfg(w).get("dtype", "float32"),
        decay=decay_of,
        device=device(),
        checkpoint=lambda w: grid.cell_dir(cell_of(w), RESULTS) + "/train_checkpoint.pt",
    script:
        "../scripts/train.py"


rule test_points:
    input:
        model=CELL + "/model.pt",
        data=RESULTS + "/{study}/{dataset}/data.pt",
    output:
        CELL + "/test_points.json",
    log:
        LOGS + "/test_points.log",
    group:
        cluster_group("fit", "train")
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 10 * attempt,
    params:
        specs=lambda w: arch_cfg(w)["test_points"],
        device=device(),
    script:
        "../scripts/test_points.py"
