"""Re-training without one chunk of the planned groups or LDS subsets (study/targets.py)."""

import json

from fragility.runtime import job_label, naming_failures, peak_gpu_memory_mb, resolve_device, start_job
from fragility.study.grid import with_run_settings
from fragility.study.pipeline import run_removal_sets
from fragility.study.targets import plan_sets

log = start_job(snakemake.log[0], snakemake.threads)
with naming_failures(job_label(snakemake.rule, snakemake.wildcards), log):  # the error names its cell
    p, w = snakemake.params, snakemake.wildcards
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    with open(snakemake.input.plan) as handle:
        sets = plan_sets(json.load(handle), w.kind)
    size, first = int(p.settings["chunk_size"]), int(w.chunk) * int(p.settings["chunk_size"])
    ids = list(range(first, min(first + size, len(sets))))
    if "copies_per_pass" in p.settings:
        loo_cfg = {**loo_cfg, "copies_per_pass": p.settings["copies_per_pass"]}
    seconds = run_removal_sets(snakemake.input.model, snakemake.input.data, snakemake.input.test_points,
                               [sets[i] for i in ids], ids, p.settings, loo_cfg, train_cfg, snakemake.output[0],
                               device_name=p.device, order_seed=p.order_seed, checkpoint_path=p.checkpoint, log=log)
    log(f"re-trained {len(ids)} {w.kind} sets in {seconds:.1f}s")
    peak = peak_gpu_memory_mb(resolve_device(p.device))
    if peak is not None:
        log(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
