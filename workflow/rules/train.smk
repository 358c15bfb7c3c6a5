rule train:
    input:
        data=RESULTS + "/{study}/{dataset}/data.pt",
    output:
        model=CELL + "/model.pt",
        metrics=CELL + "/train_metrics.json",
    params:
        train=lambda w: arch_cfg(w)["train"],
        dtype=lambda w: arch_cfg(w).get("dtype", "float32"),
        decay=decay_of,
        device=device(),
        checkpoint=lambda w: grid.cell_dir(cell_of(w), RESULTS) + "/train_checkpoint.pt",
    log:
        LOGS + "/train.log",
    benchmark:
        BENCH + "/train.tsv"
    threads: 1
    resources:
        mem_mb=res("train", "mem_mb", 2000),
        runtime=res("train", "runtime", 60),
        gpu=res("train", "gpu", 0),
    script:
        "../scripts/train.py"


rule test_points:
    input:
        model=CELL + "/model.pt",
        data=RESULTS + "/{study}/{dataset}/data.pt",
    output:
        CELL + "/test_points.json",
    params:
        specs=lambda w: arch_cfg(w)["test_points"],
        device=device(),
    log:
        LOGS + "/test_points.log",
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/test_points.py"
