# Functions of the ground-truth rules (ground_truths.smk; the truths are src/fragility/truths/):
# which truths a cell scores, each truth's chunks, the inputs of a cell's correlation job, a
# study's outputs, and the adapters of the `run:` rules.
from fragility.io import read_json  # noqa: E402
from fragility.truths import jobs as truth_jobs  # noqa: E402
from fragility.truths import registry as truth_registry  # noqa: E402

# the cell files a truth's sets are read from, and the checkpoint rule that writes each
CHECKPOINTED = {"selected.json": "select", "truths/plan.json": "truths_plan"}


def truths_enabled(wildcards_or_study):
    """The cell's `truths` list, or for a study name the union over its architectures (a
    per-architecture `overrides.<arch>.truths` may add some)."""
    if isinstance(wildcards_or_study, str):
        return truth_registry.study_enabled(config, wildcards_or_study)
    return truth_registry.enabled(arch_cfg(wildcards_or_study))


def truth_settings(name):
    """Params: truth `name`'s block of the cell over its defaults, less the run-only keys."""
    truth = truth_registry.get(name)
    return lambda w: {
        k: v
        for k, v in truth.settings(arch_cfg(w)).items()
        if k not in grid.RUN_ONLY_KEYS.get(name, ())
    }


def truth_extra(name):
    """Params: what truth `name`'s re-training reads from outside its block (PBRF: the damping)."""
    truth = truth_registry.get(name)
    return lambda w: truth.extra_params(arch_cfg(w), decay_of(w))


def planned_settings(wildcards):
    """Params of the plan: the settings each enabled planned truth draws its sets with."""
    cfg = arch_cfg(wildcards)
    out = {}
    for name in truths_enabled(wildcards):
        truth = truth_registry.get(name)
        if truth.planned:
            settings = truth.settings(cfg)
            out[name] = {k: settings[k] for k in truth.draw_keys}
    return out


def truth_chunks(name):
    """The chunk tables of truth `name` in a cell, known once the checkpoint that writes its sets
    (select, or truths_plan) has run."""
    truth = truth_registry.get(name)

    def get(wildcards):
        parsed = {
            key: read_json(
                getattr(checkpoints, CHECKPOINTED[path]).get(**wildcards).output[0]
            )
            for key, path in truth.inputs.items()
            if path in CHECKPOINTED
        }
        cfg = arch_cfg(wildcards)
        sets = truth.sets(parsed, truth.settings(cfg))
        return [
            os.path.join(
                CELL.format(**wildcards), truth.folder(), f"chunk{k:04d}.parquet"
            )
            for k in range(grid.chunk_count(len(sets), truth.chunk_size(cfg)))
        ]

    return get


loo_chunks = truth_chunks("loo")


def correlate_truths_input(wildcards):
    cell = CELL.format(**wildcards)
    out = {
        "influence": [
            os.path.join(cell, f"influence/{name}.parquet")
            for name in grid.estimators(config, wildcards.study, wildcards.arch)
        ],
        "test_points": os.path.join(cell, "test_points.json"),
        "metrics": os.path.join(cell, "train_metrics.json"),
        "selected": os.path.join(cell, "selected.json"),
    }
    for name in truths_enabled(wildcards):
        truth = truth_registry.get(name)
        if truth.score is None:  # LOO: rule correlate
            continue
        out[f"chunks_{name}"] = truth_chunks(name)(wildcards)
        out.update({k: os.path.join(cell, p) for k, p in truth.scored_inputs.items()})
        if truth.planned:
            out["plan"] = os.path.join(cell, "truths/plan.json")
    return out


def truth_outputs(study):
    """A study's outputs of the ground truths beyond LOO (outputs.truth_output_files)."""
    return outputs.truth_output_files(config, study, RESULTS)


def cell_truth_tables(study):
    """Every cell's `truths.parquet` of a study that scores more than LOO."""
    return [
        os.path.join(grid.cell_dir(c, RESULTS), "truths.parquet")
        for c in grid.cells(config, study)
        if set(truth_registry.enabled(grid.arch_config(config, study, c["arch"])))
        - {"loo"}
    ]


def correlate_truths_job(input, output, params):
    """Adapter of the correlate_truths step (runs inside the Snakemake process)."""
    truth_jobs.correlate_truths(
        params.cell,
        dict(zip(params.estimators, input.influence)),
        input.test_points,
        input.metrics,
        output[0],
        {name: list(input.get(f"chunks_{name}", [])) for name in params.truths},
        selection_path=input.selected,
        plan_path=input.get("plan"),
        inputs={
            key: input.get(key)
            for name in params.truths
            for key in truth_registry.get(name).scored_inputs
        },
        options=params.correlation,
    )


def truths_summary_job(input, output):
    """Adapter of the truths_summary step (the long and wide tables, and the figure)."""
    from fragility.report.figures import correlation_by_truth

    frame = truth_jobs.study_truths(
        list(input.cells), input.loo, output.correlations, output.table
    )
    correlation_by_truth(frame, os.path.dirname(output.figure))
