from fragility.study.pipeline import prepare_data
from fragility.runtime import start_job

log = start_job(snakemake.log[0])
data_dir = snakemake.config.get("data_dir", "data")  # not a param: moving the files changes no result
info = prepare_data(snakemake.wildcards.dataset, snakemake.params.dataset_cfg, data_dir, snakemake.output[0])
log(f"prepared {snakemake.wildcards.dataset}: {info}")
