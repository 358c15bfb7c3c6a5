"""The leave-one-out drift control: the same re-training as a LOO chunk, removing nothing."""

from fragility.runtime import script_job
from fragility.study.grid import with_run_settings
from fragility.truths.registry import get

p, w = snakemake.params, snakemake.wildcards
with script_job(snakemake.log[0], snakemake.threads, snakemake.rule, w, p.device) as log:
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")  # + checkpoints, copies per pass
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    paths = {key: str(value) for key, value in snakemake.input.items()}
    seconds = get("loo").drift(paths, loo_cfg, train_cfg, snakemake.output.table, snakemake.output.theta,
                               device_name=p.device, order_seed=p.order_seed, checkpoint_path=p.checkpoint, log=log)
    log(f"re-trained 1 copies in {seconds:.1f}s")
