"""Leave-one-out re-training of one chunk of selected points, or of the no-removal drift control."""

from fragility.study.grid import read_selected, with_run_settings
from fragility.study.pipeline import run_loo
from fragility.runtime import peak_gpu_memory_mb, resolve_device, job_label, naming_failures, start_job
from fragility.study.selection import chunk

log = start_job(snakemake.log[0], snakemake.threads)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    p, w = snakemake.params, snakemake.wildcards
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")  # + checkpoints, copies per pass
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    if "chunk" in snakemake.wildcards.keys():
        chunks = chunk(read_selected(snakemake.input.selected), int(p.loo["chunk_size"]))
        index = int(snakemake.wildcards.chunk)
        if index >= len(chunks):
            raise ValueError(f"loo/chunk{w.chunk}.parquet: the selection in {snakemake.input.selected} makes "
                             f"{len(chunks)} chunks, chunk0000 to chunk{len(chunks) - 1:04d}")
        removed = chunks[index]
        table_out, theta_out, drift_theta = snakemake.output[0], None, snakemake.input.drift_theta
    else:
        removed = [-1]  # drift control: same steps and minibatch order, nothing removed
        table_out, theta_out, drift_theta = snakemake.output.table, snakemake.output.theta, None
    seconds = run_loo(snakemake.input.model, snakemake.input.data, snakemake.input.test_points, removed, loo_cfg, train_cfg,
                      table_out, device_name=p.device, order_seed=p.order_seed, checkpoint_path=p.checkpoint,
                      drift_theta_path=drift_theta, theta_out=theta_out, log=log)
    log(f"re-trained {len(removed)} copies in {seconds:.1f}s")
    peak = peak_gpu_memory_mb(resolve_device(snakemake.params.device))
    if peak is not None:
        log(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
