"""Train θ* of one cell (rule train)."""

from fragility.study.grid import with_run_settings
from fragility.study.pipeline import train
from fragility.runtime import script_job

w, p = snakemake.wildcards, snakemake.params
with script_job(snakemake.log[0], snakemake.threads, snakemake.rule, w, p.device) as log:
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")  # + logging, checkpoints
    metrics = train(snakemake.input.data, w.arch, p.decay, int(w.seed), train_cfg, p.dtype, p.device,
                    snakemake.output.model, snakemake.output.metrics, checkpoint_path=p.checkpoint,
                    models_cfg=snakemake.config.get("models"), task_name=p.task, log=log)
    log(f"train loss {metrics['train_loss']:.4g}, accuracy {metrics['train_accuracy']:.3f}, flags {metrics['flags']}")
