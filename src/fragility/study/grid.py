"""The study grid: which cells exist, where their files live, and each cell's effective config.

A cell is one (study, dataset, architecture, decay, seed). Its files live under
`results/{study}/{dataset}/{arch}/wd{decay}/seed{seed}/`, with the decay written by `decay_label`
(`0.005` → "0.005", `0` → "0"); a label is always mapped back through the config, never parsed.
Per-architecture `overrides` are deep-merged into the study block for that architecture.
"""

from __future__ import annotations

import copy

from ..data.registry import dataset_loader
from .. import plugins
from ..engine.methods import TASK_NAMES, method_settings
from ..models.registry import check_architecture, model_spec

CELL_PATTERN = "{study}/{dataset}/{arch}/wd{decay}/seed{seed}"


def decay_label(decay: float) -> str:
    return f"{float(decay):g}"


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def study_block(config: dict, study: str) -> dict:
    if study not in config["studies"]:
        raise KeyError(f"studies.{study}: no such study in the config; known: {sorted(config['studies'])}")
    return config["studies"][study]


def arch_config(config: dict, study: str, arch: str) -> dict:
    """The study block with `overrides[arch]` merged in (e.g. a per-architecture estimator)."""
    block = study_block(config, study)
    merged = deep_merge({k: v for k, v in block.items() if k != "overrides"}, block.get("overrides", {}).get(arch, {}))
    return merged


def cells(config: dict, study: str) -> list[dict]:
    block = study_block(config, study)
    excluded = [(e.get("dataset"), e.get("arch")) for e in block.get("exclude", [])]
    out = []
    for dataset in block["datasets"]:
        for arch in block["architectures"]:
            if (dataset, arch) in excluded or (None, arch) in excluded or (dataset, None) in excluded:
                continue
            for decay in block["decays"]:
                for seed in block["seeds"]:
                    out.append({"study": study, "dataset": dataset, "arch": arch, "decay": decay_label(decay), "seed": int(seed)})
    return out


def cell_dir(cell: dict, root: str = "results") -> str:
    return f"{root}/" + CELL_PATTERN.format(**cell)


def decay_value(config: dict, study: str, label: str) -> float:
    for decay in study_block(config, study)["decays"]:
        if decay_label(decay) == label:
            return float(decay)
    raise KeyError(f"studies.{study}.decays has no value written '{label}'")


# Settings that change how a job runs, not what it computes: how often it logs and checkpoints,
# how a LOO job's copies share the processor, and the noise repeats (their own rule). Rule params
# leave them out, since Snakemake re-runs every job whose params changed; the job itself reads
# them from the config (`with_run_settings`).
RUN_ONLY_KEYS = {"train": ("check_every", "checkpoint_every"),
                 "loo": ("checkpoint_every", "copies_per_pass", "repeats")}


def result_settings(config: dict, study: str, arch: str, block: str) -> dict:
    """The `block` settings of a cell (study, arch) without their run-only keys: a rule's params."""
    return {k: v for k, v in arch_config(config, study, arch)[block].items() if k not in RUN_ONLY_KEYS[block]}


def with_run_settings(settings: dict, config: dict, study: str, arch: str, block: str) -> dict:
    """A rule's `settings` for `block` plus that block's run-only keys from the config: what the job uses."""
    merged = arch_config(config, study, arch)[block]
    return {**settings, **{k: merged[k] for k in RUN_ONLY_KEYS[block] if k in merged}}


def estimators(config: dict, study: str, arch: str) -> dict:
    """{name: settings} of the cell's estimators, each without options its method does not read
    (so that a LiSSA option merged into an `exact` override re-runs nothing). An estimator set to
    null (`kfac: null`, e.g. in a --configfile overlay or an architecture's override) is dropped."""
    methods = arch_config(config, study, arch)["influence"]["methods"]
    return {name: method_settings(name, settings) for name, settings in methods.items() if settings is not None}


def model_factory(config: dict, arch: str) -> list:
    """[import path, options] of the factory that builds `arch` (a rule's param: changing a model of
    your own re-trains it)."""
    spec, options, _ = model_spec(arch, config.get("models"))
    return [spec, options]


def damping_for(influence_cfg: dict, decay: float) -> float:
    """The damping δ of H + δI: `damping_without_decay` for a cell without decay, if set, else `damping`."""
    if decay == 0 and "damping_without_decay" in influence_cfg:
        return float(influence_cfg["damping_without_decay"])
    return float(influence_cfg["damping"])


def enabled_studies(config: dict) -> list[str]:
    return [name for name, block in config["studies"].items() if block.get("enabled", True)]


def check_config(config: dict) -> None:
    """Checks a JSON schema cannot express; raises ValueError naming the offending key."""
    for study, block in config["studies"].items():
        if block.get("kind") == "iris" and study != "iris":  # workflow/rules/plots.smk: rule plot_iris
            raise ValueError(f"studies.{study}.kind: the Iris figures are drawn for the study named 'iris' only; "
                             f"name this study 'iris' or give it kind 'generic'")
        task = block.get("task", "cross_entropy")
        if task not in TASK_NAMES:
            if ":" not in task:
                raise ValueError(f"studies.{study}.task: unknown task '{task}'; known: {list(TASK_NAMES)}, or a Task "
                                 "class of your own written 'path/to/file.py:ClassName'")
            plugins.parameters(task, f"studies.{study}.task")  # the file and the class exist
        for dataset_id, dataset_cfg in block["datasets"].items():
            try:
                dataset_loader(dataset_id, dataset_cfg)
            except ValueError as err:
                raise ValueError(f"studies.{study}.{err}") from None
        for arch in block["architectures"]:
            try:
                check_architecture(arch, config.get("models"))
            except ValueError as err:
                raise ValueError(f"studies.{study}.architectures: {err}") from None
        for arch in block.get("overrides", {}):
            if arch not in block["architectures"]:
                raise ValueError(f"studies.{study}.overrides.{arch}: not one of the study's architectures")
        for arch in block["architectures"]:
            merged = arch_config(config, study, arch)
            by = merged["select"]["by"]
            named = sorted(k for k, v in merged["influence"]["methods"].items() if v is not None)
            if by not in named:
                raise ValueError(f"studies.{study}.select.by: '{by}' is not one of influence.methods {named} "
                                 f"(architecture {arch})")
        figures = block.get("figures", {})
        if figures.get("scatter_architecture", block["architectures"][0]) not in block["architectures"]:
            raise ValueError(f"studies.{study}.figures.scatter_architecture: '{figures['scatter_architecture']}' is not "
                             "one of the study's architectures")
        if "estimator" in figures and block["influence"]["methods"].get(figures["estimator"]) is None:
            raise ValueError(f"studies.{study}.figures.estimator: '{figures['estimator']}' is not one of influence.methods "
                             f"{sorted(block['influence']['methods'])}")
        labels = [decay_label(d) for d in block["decays"]]
        if len(set(labels)) != len(labels):
            raise ValueError(f"studies.{study}.decays: duplicate values {block['decays']}")
        if len(set(block["seeds"])) != len(block["seeds"]):
            raise ValueError(f"studies.{study}.seeds: duplicate values {block['seeds']}")


def read_selected(path) -> list[int]:
    import json

    with open(path) as handle:
        return list(json.load(handle)["indices"])
