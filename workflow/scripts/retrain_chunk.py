"""One chunk of a ground truth's re-trainings (rule <truth>_chunk; src/fragility/truths)."""

from fragility.runtime import job_label, naming_failures, peak_gpu_memory_mb, resolve_device, start_job
from fragility.study.grid import with_run_settings
from fragility.truths.jobs import run_chunk

log = start_job(snakemake.log[0], snakemake.threads)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    p, w = snakemake.params, snakemake.wildcards
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")  # + checkpoints, copies per pass
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    paths = {key: str(value) for key, value in snakemake.input.items()}
    seconds, copies = run_chunk(p.truth, paths, int(w.chunk), p.settings, loo_cfg, train_cfg, snakemake.output[0],
                                device_name=p.device, order_seed=p.order_seed, checkpoint_path=p.checkpoint, log=log,
                                **p.extra)
    log(f"re-trained {copies} {p.truth} copies in {seconds:.1f}s")
    peak = peak_gpu_memory_mb(resolve_device(p.device))
    if peak is not None:
        log(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
