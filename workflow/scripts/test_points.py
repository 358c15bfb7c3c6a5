from fragility.study.pipeline import pick_test_points
from fragility.runtime import script_job

with script_job(snakemake.log[0], None, snakemake.rule, snakemake.wildcards) as log:  # the error names its cell
    points = pick_test_points(snakemake.input.model, snakemake.input.data, snakemake.params.specs, snakemake.output[0],
                              snakemake.params.device)
    log(f"test points: {points}")
