rule prepare_data:
    input:
        lambda w: image_data.required_files(
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
        mem_mb=2000,
        runtime=10,
    params:
        dataset_cfg=lambda w: grid.study_block(config, w.study)["datasets"][w.dataset],
        data_dir=config.get("data_dir", "data"),
    script:
        "../scripts/prepare_data.py"


# Runs where Snakemake runs, never as a cluster job: image datasets are downloaded here, and
# compute nodes are often offline.
localrules:
    prepare_data,
