"""PBRF re-training of one chunk of the selected points (engine/pbrf.py)."""

from fragility.runtime import job_label, naming_failures, peak_gpu_memory_mb, resolve_device, start_job
from fragility.study.grid import read_selected, with_run_settings
from fragility.study.pipeline import run_pbrf
from fragility.study.selection import chunk

log = start_job(snakemake.log[0], snakemake.threads)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    p, w = snakemake.params, snakemake.wildcards
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    size = int(p.pbrf.get("chunk_size", p.loo["chunk_size"]))
    removed = chunk(read_selected(snakemake.input.selected), size)[int(w.chunk)]
    seconds = run_pbrf(snakemake.input.model, snakemake.input.data, snakemake.input.test_points, removed, p.pbrf, loo_cfg,
                       train_cfg, p.damping, snakemake.output[0], device_name=p.device, order_seed=p.order_seed,
                       checkpoint_path=p.checkpoint, log=log)
    log(f"PBRF for {len(removed)} removals done")
    peak = peak_gpu_memory_mb(resolve_device(p.device))
    if peak is not None:
        log(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
