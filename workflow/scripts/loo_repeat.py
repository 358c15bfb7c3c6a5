"""Repeat of some leave-one-out re-trainings (and the drift control) with another minibatch order."""

from fragility.runtime import script_job
from fragility.study.grid import with_run_settings
from fragility.truths.registry import get

p, w = snakemake.params, snakemake.wildcards
with script_job(snakemake.log[0], snakemake.threads, snakemake.rule, w, p.device) as log:
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")  # + checkpoints, copies per pass
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    paths = {key: str(value) for key, value in snakemake.input.items()}
    seconds, indices = get("loo").repeat(paths, p.repeats, loo_cfg, train_cfg, snakemake.output[0],
                                         order_seed=p.order_seed, checkpoint_prefix=p.checkpoint,
                                         device_name=p.device, log=log)
    log(f"repeated {len(indices)} re-trainings and the drift control with order seed {p.order_seed} in {seconds:.1f}s")
