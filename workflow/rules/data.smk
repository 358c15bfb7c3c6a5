rule prepare_data:
    input:
        lambda w: grid.check_wildcards(config, dict(w.items()))
        or image_data.required_files(
            w.dataset,
            grid.study_block(config, w.study)["datasets"][w.dataset],
            DATA_DIR,
        ),
    output:
        os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
    log:
        os.path.join(RESULTS, "logs/{study}/{dataset}/prepare_data.log"),
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,  # CIFAR-10 as float32: about 0.7 GB, with the raw arrays alongside
        runtime=20,
    params:
        # what determines the data; where the files are and whether they may be downloaded do not
        # (the job reads `data_dir` from the config), so changing those re-runs nothing
        dataset_cfg=lambda w: {
            k: v
            for k, v in grid.study_block(config, w.study)["datasets"][
                w.dataset
            ].items()
            if k != "download"
        },
    script:
        "../scripts/prepare_data.py"
