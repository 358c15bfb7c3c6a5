from fragility.study.pipeline import compute_influence
from fragility.runtime import peak_gpu_memory_mb, resolve_device, job_label, naming_failures, start_job

log = start_job(snakemake.log[0], snakemake.threads)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    p = snakemake.params
    compute_influence(snakemake.input.model, snakemake.input.data, snakemake.input.test_points, snakemake.wildcards.estimator,
                      p.method, p.damping, snakemake.output.table, snakemake.output.diagnostics, device_name=p.device,
                      extra_models=list(snakemake.input.models), **p.chunks, log=log)
    peak = peak_gpu_memory_mb(resolve_device(snakemake.params.device))
    if peak is not None:
        log(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
