"""Draw and write the groups and LDS subsets of one cell (study/targets.py)."""

from fragility.runtime import job_label, naming_failures, start_job
from fragility.study.pipeline import plan_targets

log = start_job(snakemake.log[0], 1)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    p = snakemake.params
    plan = plan_targets(snakemake.input.data, snakemake.input.influence, p.targets, p.groups, p.lds, p.seed_keys,
                        snakemake.output[0])
    log(f"plan: {len(plan.get('groups', []))} groups, {len(plan.get('lds', {}).get('left_out', []))} LDS subsets")
