"""Draw and write the sets of one cell's planned ground truths (groups, LDS subsets; src/fragility/truths)."""

from fragility.runtime import script_job
from fragility.truths.jobs import plan_truths

with script_job(snakemake.log[0], 1, snakemake.rule, snakemake.wildcards) as log:  # the error names its cell
    p = snakemake.params
    influence = dict(zip(p.estimators, snakemake.input.influence))  # several under select.by: union (groups' tails)
    plan = plan_truths(snakemake.input.data, influence, p.settings, p.seed_keys, snakemake.output[0])
    log("plan: " + ", ".join(f"{len(plan[name]) if isinstance(plan[name], list) else len(plan[name]['left_out'])} "
                             f"{name} sets" for name in p.settings))
