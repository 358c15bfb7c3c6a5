"""Influence of every training point by one estimator (rule influence)."""

from fragility.study.grid import influence_on_error
from fragility.study.pipeline import compute_influence
from fragility.runtime import script_job

p, w = snakemake.params, snakemake.wildcards
with script_job(snakemake.log[0], snakemake.threads, snakemake.rule, snakemake.wildcards, p.device) as log:
    compute_influence(snakemake.input.model, snakemake.input.data, snakemake.input.test_points, snakemake.wildcards.estimator,
                      p.method, p.damping, snakemake.output.table, snakemake.output.diagnostics, device_name=p.device,
                      extra_models=list(snakemake.input.models), **p.chunks, on_error=influence_on_error(snakemake.config, w.study, w.arch), log=log)
