"""The leave-one-out drift control: the same re-training as a LOO chunk, removing nothing."""

from fragility.runtime import job_label, naming_failures, peak_gpu_memory_mb, resolve_device, start_job
from fragility.study.grid import with_run_settings
from fragility.truths.registry import get

log = start_job(snakemake.log[0], snakemake.threads)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    p, w = snakemake.params, snakemake.wildcards
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")  # + checkpoints, copies per pass
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    paths = {key: str(value) for key, value in snakemake.input.items()}
    seconds = get("loo").drift(paths, loo_cfg, train_cfg, snakemake.output.table, snakemake.output.theta,
                               device_name=p.device, order_seed=p.order_seed, checkpoint_path=p.checkpoint, log=log)
    log(f"re-trained 1 copies in {seconds:.1f}s")
    peak = peak_gpu_memory_mb(resolve_device(p.device))
    if peak is not None:
        log(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
