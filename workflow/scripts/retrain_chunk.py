"""One chunk of a ground truth's re-trainings (rule <truth>_chunk; src/fragility/truths)."""

from fragility.runtime import script_job
from fragility.study.grid import with_run_settings
from fragility.truths.jobs import run_chunk

p, w = snakemake.params, snakemake.wildcards
with script_job(snakemake.log[0], snakemake.threads, snakemake.rule, w, p.device) as log:
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")  # + checkpoints, copies per pass
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    paths = {key: str(value) for key, value in snakemake.input.items()}
    seconds, copies = run_chunk(p.truth, paths, int(w.chunk), p.settings, loo_cfg, train_cfg, snakemake.output[0],
                                device_name=p.device, order_seed=p.order_seed, checkpoint_path=p.checkpoint, log=log,
                                **p.extra)
    log(f"re-trained {copies} {p.truth} copies in {seconds:.1f}s")
