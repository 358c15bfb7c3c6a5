from fragility.study.pipeline import pick_test_points
from fragility.runtime import job_label, naming_failures, start_job

log = start_job(snakemake.log[0])
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    points = pick_test_points(snakemake.input.model, snakemake.input.data, snakemake.params.specs, snakemake.output[0],
                              snakemake.params.device)
    log(f"test points: {points}")
