# Ground-truth noise: the first `loo.repeats.count` selected points of a cell (and a drift control)
# re-trained again with another minibatch order; see src/fragility/noise.py.


def repeat_settings(wildcards):
    """`loo.repeats` of a cell's merged config, with its defaults (count 0 disables)."""
    return {
        "count": 0,
        "order_seed_offset": 1,
        **arch_cfg(wildcards)["loo"].get("repeats", {}),
    }


def loo_repeat_input(wildcards):
    """The repeat table of a cell, or nothing when `loo.repeats.count` is 0."""
    if repeat_settings(wildcards)["count"] == 0:
        return []
    return [CELL.format(**wildcards) + "/loo/repeat.parquet"]


rule loo_repeat:
    input:
        model=CELL + "/model.pt",
        data=RESULTS + "/{study}/{dataset}/data.pt",
        test_points=CELL + "/test_points.json",
        selected=CELL + "/selected.json",
    output:
        CELL + "/loo/repeat.parquet",
    log:
        LOGS + "/loo_repeat.log",
    benchmark:
        BENCH + "/loo_repeat.tsv"
    threads: 1
    resources:
        mem_mb=res("loo", "mem_mb", 2000),
        runtime=res("loo", "runtime", 60),
        gpu=res("loo", "gpu", 0),
    params:
        repeats=lambda w: repeat_settings(w)["count"],
        loo=lambda w: arch_cfg(w)["loo"],
        train=lambda w: arch_cfg(w)["train"],
        order_seed=lambda w: rules.loo_drift.params.order_seed(w)
        + repeat_settings(w)["order_seed_offset"],
        device=device(),
        checkpoint=lambda w: CELL.format(**w) + "/loo/repeat.checkpoint",
    script:
        "../scripts/loo_repeat.py"
