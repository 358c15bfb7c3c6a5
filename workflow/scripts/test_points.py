from fragility.study.pipeline import pick_test_points
from fragility.runtime import start_job

log = start_job(snakemake.log[0])
points = pick_test_points(snakemake.input.model, snakemake.input.data, snakemake.params.specs, snakemake.output[0],
                          snakemake.params.device)
log(f"test points: {points}")
