# Ground-truth noise: the first `loo.repeats.count` selected points of a cell (and a drift control)
# re-trained again with another minibatch order; see src/fragility/noise.py.


rule loo_repeat:
    input:
        model=in_grid(os.path.join(CELL, "model.pt")),
        data=os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
        test_points=os.path.join(CELL, "test_points.json"),
        selected=os.path.join(CELL, "selected.json"),
    output:
        os.path.join(CELL, "loo/repeat.parquet"),
    log:
        os.path.join(LOGS, "loo_repeat.log"),
    benchmark:
        os.path.join(BENCH, "loo_repeat.tsv")
    group:
        cluster_group("loo", "loo")
    conda:
        CONDA_ENV
    threads: cluster_threads("loo")
    resources:
        **cluster_resources("loo"),
    params:
        repeats=lambda w: repeat_settings(w)["count"],
        loo=settings_of("loo", unused=("chunk_size",)),
        train=settings_of("train"),
        order_seed=lambda w: grid.repeat_order_seed(config, w.study, w.arch, w.seed),
        device=device(),
        checkpoint=lambda w: os.path.join(CELL.format(**w), "loo/repeat.checkpoint"),
    script:
        "../scripts/loo_repeat.py"
