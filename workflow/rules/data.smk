rule prepare_data:
    input:
        lambda w: grid.check_wildcards(config, dict(w.items()))
        or image_data.required_files(
            w.dataset,
            grid.study_block(config, w.study)["datasets"][w.dataset],
            DATA_DIR,
        ),
        lambda w: (
            [os.path.join(RESULTS, w.study, w.dataset, "imagenet_folders.json")]
            if image_data.is_imagenet(
                w.dataset, grid.study_block(config, w.study)["datasets"][w.dataset]
            )
            else []
        ),
    output:
        os.path.join(RESULTS, "{study}/{dataset}/data.pt"),
    log:
        os.path.join(RESULTS, "logs/{study}/{dataset}/prepare_data.log"),
    conda:
        CONDA_ENV
    threads: lambda w: data_resource(w, "cpus_per_task", 1)
    resources:
        # CIFAR-10 as float32: about 0.7 GB, with the raw arrays alongside; ImageNet subsets set
        # `resources.data` (study level)
        mem_mb=lambda w, attempt: data_resource(w, "mem_mb", 4000) * attempt,
        runtime=lambda w, attempt: data_resource(w, "runtime", 20) * attempt,
        cpus_per_task=lambda w: data_resource(w, "cpus_per_task", 1),
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


# ImageNet is never downloaded: this local step checks, before any cluster job, that the folders
# the config points at exist (train/<wnid>/, val/<wnid>/), and stops with where they must be.
rule check_imagenet:
    output:
        os.path.join(RESULTS, "{study}/{dataset}/imagenet_folders.json"),
    log:
        os.path.join(RESULTS, "logs/{study}/{dataset}/check_imagenet.log"),
    run:
        logged(
            log,
            lambda found: f"ImageNet folders: {found}",
            check_imagenet_job,
            wildcards,
            output,
        )


localrules:
    check_imagenet,
