"""Draw and write the groups and LDS subsets of one cell (study/targets.py)."""

import os
import sys

# the library in src/ (importable in any environment: venv, --sdm conda, cluster nodes)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from fragility.runtime import start_job
from fragility.study.pipeline import plan_targets

log = start_job(snakemake.log[0], 1)
p = snakemake.params
plan = plan_targets(snakemake.input.data, snakemake.input.influence, p.targets, p.groups, p.lds, p.seed_keys,
                    snakemake.output[0])
log(f"plan: {len(plan.get('groups', []))} groups, {len(plan.get('lds', {}).get('left_out', []))} LDS subsets")
