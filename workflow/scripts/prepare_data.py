from fragility.study.grid import check_sizes
from fragility.study.pipeline import prepare_data
from fragility.runtime import script_job

with script_job(snakemake.log[0], None, snakemake.rule, snakemake.wildcards) as log:  # the error names its cell
    data_dir = snakemake.config.get("data_dir", "data")  # not a param: moving the files changes no result
    w = snakemake.wildcards
    info = prepare_data(w.dataset, snakemake.params.dataset_cfg, data_dir, snakemake.output[0],
                        check=lambda n_train, n_test: check_sizes(snakemake.config, w.study, w.dataset, n_train, n_test))
    log(f"prepared {snakemake.wildcards.dataset}: {info}")
