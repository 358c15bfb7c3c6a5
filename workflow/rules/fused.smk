# Small nets (study key `fuse_fit: true`): a cell's train → test points → influence (every
# estimator) → drift control run as one job, rule fit_<study>, with the outputs, logs and numbers
# of the split rules (train.smk, influence.smk, loo.smk), which take every other study. A cell then
# pays one interpreter start-up (Python, torch, pandas, the script wrapper) for these steps instead
# of 4 + (number of estimators). Selection, LOO chunks and correlations stay their own jobs.


def fused_resources():
    """Resources of a fused job: the largest memory and GPU count, the summed run time and the
    training's cores of its steps (`resources.train|influence|loo`), grown with the attempt.
    """

    def pick(key, combine):
        parts = [
            res(step, key, RESOURCE_FALLBACKS[step][key])
            for step in ("train", "influence", "loo")
        ]
        return lambda wildcards, attempt: combine(p(wildcards, attempt) for p in parts)

    return {
        "mem_mb": pick("mem_mb", max),
        "runtime": pick("runtime", sum),
        "gpu": pick("gpu", max),
        "cpus_per_task": res("train", "cpus_per_task", 1),
        "gpu_model": gpu_model("train"),
    }


def fused_rule_name(study, index, count):
    return f"fit_{study}" if count == 1 else f"fit_{study}_{index}"


def fused_outputs(estimators):
    """Named outputs of a fused job: the split rules' files of one cell."""
    return {
        "model": os.path.join(CELL, "model.pt"),
        "metrics": os.path.join(CELL, "train_metrics.json"),
        "test_points": os.path.join(CELL, "test_points.json"),
        **{
            f"table_{name}": os.path.join(CELL, f"influence/{name}.parquet")
            for name in estimators
        },
        **{
            f"diagnostics_{name}": os.path.join(CELL, f"influence/{name}.json")
            for name in estimators
        },
        "drift_table": os.path.join(CELL, "loo/drift.parquet"),
        "drift_theta": os.path.join(CELL, "loo/drift_theta.pt"),
    }


def fused_logs(estimators):
    """The split rules' logs, and fit.log (each step's time; next to the benchmark file fit.tsv)."""
    return {
        "fit": os.path.join(LOGS, "fit.log"),
        "train": os.path.join(LOGS, "train.log"),
        "test_points": os.path.join(LOGS, "test_points.log"),
        **{
            f"influence_{name}": os.path.join(LOGS, f"influence_{name}.log")
            for name in estimators
        },
        "loo_drift": os.path.join(LOGS, "loo_drift.log"),
    }


for _study in FUSED_STUDIES:
    _sets = grid.fused_rule_sets(config, _study)
    for _index, (_estimators, _archs) in enumerate(_sets):

        rule:
            name:
                fused_rule_name(_study, _index, len(_sets))
            input:
                data=in_grid(os.path.join(RESULTS, "{study}/{dataset}/data.pt")),
            output:
                **fused_outputs(_estimators),
            log:
                **fused_logs(_estimators),
            benchmark:
                os.path.join(BENCH, "fit.tsv")
            wildcard_constraints:
                study=re.escape(_study),
                arch="|".join(re.escape(a) for a in _archs),
            group:
                cluster_group("fit", "train")
            conda:
                CONDA_ENV
            threads: cluster_threads("train")
            resources:
                **fused_resources(),
            params:
                # the split rules' params, so that a change re-runs the job as it re-ran them
                train=settings_of("train"),
                task=lambda w: arch_cfg(w).get("task", "cross_entropy"),
                factory=lambda w: grid.model_factory(config, w.arch),
                dtype=lambda w: arch_cfg(w).get("dtype", "float32"),
                decay=decay_of,
                specs=lambda w: arch_cfg(w)["test_points"],
                estimators=list(_estimators),
                methods=lambda w: grid.estimators(config, w.study, w.arch),
                damping=damping_of,
                chunks=lambda w: grid.influence_chunks(config, w.study, w.arch),
                loo=settings_of("loo", unused=("chunk_size",)),
                order_seed=lambda w: grid.loo_order_seed(w.seed),
                device=device(),
                checkpoint=lambda w: os.path.join(
                    grid.cell_dir(cell_of(w), RESULTS), "train_checkpoint.pt"
                ),
                drift_checkpoint=lambda w: os.path.join(
                    CELL.format(**w), "loo/drift.checkpoint.pt"
                ),
            script:
                "../scripts/fit_cell.py"
