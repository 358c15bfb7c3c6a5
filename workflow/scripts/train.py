from fragility.study.grid import with_run_settings
from fragility.study.pipeline import train
from fragility.runtime import peak_gpu_memory_mb, resolve_device, job_label, naming_failures, start_job

log = start_job(snakemake.log[0], snakemake.threads)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    w, p = snakemake.wildcards, snakemake.params
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")  # + logging, checkpoints
    metrics = train(snakemake.input.data, w.arch, p.decay, int(w.seed), train_cfg, p.dtype, p.device,
                    snakemake.output.model, snakemake.output.metrics, checkpoint_path=p.checkpoint,
                    models_cfg=snakemake.config.get("models"), task_name=p.task, log=log)
    log(f"train loss {metrics['train_loss']:.4g}, accuracy {metrics['train_accuracy']:.3f}, flags {metrics['flags']}")
    peak = peak_gpu_memory_mb(resolve_device(snakemake.params.device))
    if peak is not None:
        log(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
