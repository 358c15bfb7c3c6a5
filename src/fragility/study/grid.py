"""The study grid: which cells exist, where their files live, and each cell's effective config.

A cell is one (study, dataset, architecture, decay, seed). Its files live under
`results/{study}/{dataset}/{arch}/wd{decay}/seed{seed}/`, with the decay written by `decay_label`
(`0.005` → "0.005", `0` → "0"); a label is always mapped back through the config, never parsed.
Per-architecture `overrides` are deep-merged into the study block for that architecture.
"""

from __future__ import annotations

import copy

from ..data.registry import dataset_loader
from ..engine.methods import method_settings
from ..models.registry import check_architecture

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


class GridError(ValueError):
    """A path names a cell, dataset or estimator that is not in the study's grid."""


def study_block(config: dict, study: str) -> dict:
    if study not in config["studies"]:
        raise GridError(f"studies.{study}: no such study in the config; known: {sorted(config['studies'])}")
    return config["studies"][study]


def _listing(values) -> str:
    return ", ".join(str(v) for v in values)


def check_wildcards(config: dict, wildcards: dict) -> None:
    """A target path's wildcards (study, dataset, arch, decay, seed, estimator; any subset) name a
    part of the study's grid; GridError naming the path's part and listing what exists otherwise.
    Every per-cell rule calls this at DAG build, so a path outside the grid is never planned."""
    values = {key: str(value) for key, value in wildcards.items()}
    study = values["study"]
    if study not in config["studies"]:
        raise GridError(f"results/{study}/: '{study}' is not a study of the config; studies: {_listing(config['studies'])}")
    block = config["studies"][study]
    where = f"results/{study}/"
    if "dataset" in values:
        dataset = values["dataset"]
        if dataset not in block["datasets"]:
            raise GridError(f"{where}{dataset}/: '{dataset}' is not a dataset of studies.{study}.datasets; "
                            f"its datasets: {_listing(block['datasets'])}")
        where += f"{dataset}/"
    if "arch" in values:
        arch = values["arch"]
        if arch not in block["architectures"]:
            raise GridError(f"{where}{arch}/: '{arch}' is not one of studies.{study}.architectures: "
                            f"{_listing(block['architectures'])}")
        if "dataset" in values and not any(c["arch"] == arch and c["dataset"] == values["dataset"]
                                           for c in cells(config, study)):
            raise GridError(f"{where}{arch}/: studies.{study}.exclude leaves out {arch} on {values['dataset']}; "
                            f"its architectures on {values['dataset']}: "
                            f"{_listing(sorted({c['arch'] for c in cells(config, study) if c['dataset'] == values['dataset']}))}")
        where += f"{arch}/"
    if "decay" in values:
        labels = [decay_label(d) for d in block["decays"]]
        if values["decay"] not in labels:
            raise GridError(f"{where}wd{values['decay']}/: studies.{study}.decays {block['decays']} has no decay written "
                            f"'{values['decay']}'; the decays are written {_listing('wd' + label for label in labels)} "
                            "(a decay is written the way Python's '%g' writes it: 0.0 as wd0, 0.005 as wd0.005)")
        where += f"wd{values['decay']}/"
    if "seed" in values:
        if not values["seed"].isdigit() or int(values["seed"]) not in [int(s) for s in block["seeds"]] \
                or values["seed"] != str(int(values["seed"])):
            raise GridError(f"{where}seed{values['seed']}/: {values['seed']} is not one of studies.{study}.seeds; "
                            f"the seeds are written {_listing('seed' + str(int(s)) for s in block['seeds'])}")
        where += f"seed{values['seed']}/"
    if "estimator" in values and "arch" in values:
        names = list(estimators(config, study, values["arch"]))
        if values["estimator"] not in names:
            raise GridError(f"{where}influence/{values['estimator']}: '{values['estimator']}' is not an estimator of "
                            f"studies.{study}.influence.methods; its estimators: {_listing(names)}")


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
    check_wildcards(config, {"study": study, "decay": label})
    raise GridError(f"studies.{study}.decays has no value written '{label}'")


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
    (so that a LiSSA option merged into an `exact` override re-runs nothing)."""
    return {name: method_settings(name, settings) for name, settings in arch_config(config, study, arch)["influence"]["methods"].items()}


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
            if by not in merged["influence"]["methods"]:
                raise ValueError(f"studies.{study}.select.by: '{by}' is not one of influence.methods {sorted(merged['influence']['methods'])}")
        figures = block.get("figures", {})
        if figures.get("scatter_architecture", block["architectures"][0]) not in block["architectures"]:
            raise ValueError(f"studies.{study}.figures.scatter_architecture: '{figures['scatter_architecture']}' is not "
                             "one of the study's architectures")
        if "estimator" in figures and figures["estimator"] not in block["influence"]["methods"]:
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
