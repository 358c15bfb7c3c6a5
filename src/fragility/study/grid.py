"""The study grid: which cells exist, where their files live, and each cell's effective config.

A cell is one (study, dataset, architecture, decay, seed). Its files live under
`results/{study}/{dataset}/{arch}/wd{decay}/seed{seed}/`, with the decay written by `decay_label`
(`0.005` → "0.005", `0` → "0"); a label is always mapped back through the config, never parsed.
Per-architecture `overrides` are deep-merged into the study block for that architecture.
"""

from __future__ import annotations

import copy
import re

from .. import plugins
from ..data.registry import dataset_loader, expected_sizes
from ..engine.methods import TASK_NAMES
from ..estimators import registry as estimator_registry
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
        if "dataset" in values and _excluded(block, values["dataset"], arch):
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
        allowed = (seeds_of(config, study, values["arch"]) if "arch" in values
                   else sorted({int(s) for arch in block["architectures"] for s in seeds_of(config, study, arch)}))
        if not values["seed"].isdigit() or int(values["seed"]) not in [int(s) for s in allowed] \
                or values["seed"] != str(int(values["seed"])):
            key = f"overrides.{values['arch']}.seeds" if "arch" in values and "seeds" in block.get("overrides", {}).get(
                values["arch"], {}) else "seeds"
            raise GridError(f"{where}seed{values['seed']}/: {values['seed']} is not one of studies.{study}.{key}; "
                            f"the seeds are written {_listing('seed' + str(int(s)) for s in allowed)}")
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


def seeds_of(config: dict, study: str, arch: str) -> list[int]:
    """The seeds of an architecture's cells: `overrides.<arch>.seeds`, else the study's `seeds`."""
    return [int(s) for s in arch_config(config, study, arch)["seeds"]]


def _excluded(block: dict, dataset: str, arch: str) -> bool:
    """Whether the study block's `exclude` leaves out (dataset, arch)."""
    excluded = [(e.get("dataset"), e.get("arch")) for e in block.get("exclude", [])]
    return (dataset, arch) in excluded or (None, arch) in excluded or (dataset, None) in excluded


def cells(config: dict, study: str) -> list[dict]:
    block = study_block(config, study)
    out = []
    for dataset in block["datasets"]:
        for arch in block["architectures"]:
            if _excluded(block, dataset, arch):
                continue
            for decay in block["decays"]:
                for seed in seeds_of(config, study, arch):
                    out.append({"study": study, "dataset": dataset, "arch": arch, "decay": decay_label(decay), "seed": int(seed)})
    return out


def cell_dir(cell: dict, root: str = "results") -> str:
    return f"{root}/" + CELL_PATTERN.format(**cell)


def cell_keys(config: dict, cell: dict) -> dict:
    """A cell's keys as the tables hold them: the decay as its number (mapped through the config)."""
    return {**cell, "decay": decay_value(config, cell["study"], cell["decay"]), "seed": int(cell["seed"])}


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
    (so that a LiSSA option merged into an `exact` override re-runs nothing). An estimator set to
    null (`kfac: null`, e.g. in a --configfile overlay or an architecture's override) is dropped."""
    methods = arch_config(config, study, arch)["influence"]["methods"]
    return {name: estimator_registry.method_settings(name, settings) for name, settings in methods.items()
            if settings is not None}


def estimator_model_cells(config: dict, wildcards: dict, estimator: str) -> list[dict]:
    """The cells whose trained models estimator `estimator` of the cell `wildcards` gets besides
    its own (the DAG hook of `requires`): for "several_models", the cell's other seeds (same
    dataset, architecture and decay); none otherwise."""
    settings = estimators(config, wildcards["study"], wildcards["arch"])[estimator]
    method = estimator_registry.method_of(estimator, settings)
    options = {k: v for k, v in settings.items() if k != "method"}  # an option can bring a need (requires_by_option)
    if "several_models" not in estimator_registry.requirements(method, f"influence.methods.{estimator}", options):
        return []
    return [c for c in cells(config, wildcards["study"]) if c["seed"] != int(wildcards["seed"])
            and all(c[k] == wildcards[k] for k in ("dataset", "arch", "decay"))]


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


# the minibatch order of every re-training of a cell (LOO chunks, drift control and the other
# ground truths) is seeded by the cell's seed plus this offset, so that it differs from θ*'s own
LOO_ORDER_OFFSET = 7919


def loo_order_seed(seed) -> int:
    return int(seed) + LOO_ORDER_OFFSET


def repeat_settings(config: dict, study: str, arch: str) -> dict:
    """`loo.repeats` of a cell with its defaults (count 0 disables the repeat re-trainings)."""
    return {"count": 0, "order_seed_offset": 1, **arch_config(config, study, arch)["loo"].get("repeats", {})}


def repeat_order_seed(config: dict, study: str, arch: str, seed) -> int:
    return loo_order_seed(seed) + int(repeat_settings(config, study, arch)["order_seed_offset"])


def length_keys(block: dict) -> list[str]:
    """The re-training length keys a config block sets: `steps` and/or `epochs`, not null (an
    overlay's way to unset one). LOO needs exactly one; another truth at most one (none: loo's)."""
    return [key for key in ("steps", "epochs") if block.get(key) is not None]


def chunk_count(total: int, chunk_size: int) -> int:
    """How many chunks of `chunk_size` items `total` items make: ceil(total / chunk_size)."""
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    return (int(total) + int(chunk_size) - 1) // int(chunk_size)


def chunk(items: list, size: int) -> list[list]:
    """`items` in consecutive chunks of `size` (the last one shorter): chunk k is items[k·size : (k+1)·size]."""
    return [items[k * int(size) : (k + 1) * int(size)] for k in range(chunk_count(len(items), size))]


def influence_chunks(config: dict, study: str, arch: str) -> dict:
    """The rows per pass of an influence job: `chunk_size` (curvature products, default 1024) and
    `scoring_chunk_size` (scoring; None: the engine's default for the device)."""
    block = arch_config(config, study, arch)["influence"]
    return {"chunk_size": int(block.get("chunk_size", 1024)), "scoring_chunk_size": block.get("scoring_chunk_size")}


def influence_on_error(config: dict, study: str, arch: str) -> str:
    """`influence.on_error` (run-only: the job reads it from the config, not from rule params, so
    switching it re-runs nothing): what an estimator that raises does to its job, "flag" (default: NaN
    scores with the status `failed: ...`, the study goes on) or "stop" (pipeline.compute_influence)."""
    return str(arch_config(config, study, arch)["influence"].get("on_error", "flag"))


def enabled_studies(config: dict) -> list[str]:
    return [name for name, block in config["studies"].items() if block.get("enabled", True)]


RENAMED_KEYS = {"targets": "truths"}  # old study key → its name now


def check_renamed_keys(config: dict) -> None:
    """ValueError, one line naming the new key, for a study or override key that was renamed
    (`targets:` is `truths:`, the ground truths every estimator is scored against)."""
    for study, block in (config.get("studies") or {}).items():
        if not isinstance(block, dict):
            continue
        parts = [(f"studies.{study}", block)] + [(f"studies.{study}.overrides.{arch}", patch)
                                                  for arch, patch in (block.get("overrides") or {}).items()]
        for where, part in parts:
            for old, new in RENAMED_KEYS.items():
                if isinstance(part, dict) and old in part:
                    raise ValueError(f"{where}.{old}: renamed to `{new}:` (the ground truths); write {new}: {part[old]}")


def check_all(config: dict, files: list[tuple[str, dict]], schema_path: str, fill_defaults=None) -> None:
    """Every check made when the DAG is built, in order (workflow/rules/common.smk): the shape of
    the selection rules, the JSON schema at `schema_path` (readable messages: config_errors), then
    `fill_defaults(config)` (Snakemake's validate, which fills in the schema's defaults), the
    checks a schema cannot express, and the options written in each config file. `files` are the
    (name, parsed YAML) of the config files, so that each message names the file first."""
    from .config_errors import check_schema, with_file

    try:
        check_renamed_keys(config)
        check_select_rules(config)
        check_schema(config, schema_path, files)
        if fill_defaults is not None:
            fill_defaults(config)
        check_config(config)
    except ValueError as err:
        raise type(err)(with_file(str(err), files)) from None
    check_method_options(config, files)


def fused_studies(config: dict) -> list[str]:
    """Studies with `fuse_fit: true`: a cell's train → test points → influence → drift control run
    as one job (workflow/rules/fused.smk) instead of 4 + (number of estimators)."""
    return [name for name, block in config["studies"].items() if block.get("fuse_fit", False)]


def fused_rule_sets(config: dict, study: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """[(estimator names, architectures)] of a fused study: its architectures grouped by the
    estimators they compute (an `overrides.<arch>.influence.methods` can change the set), in the
    order of `architectures`. A fused job declares every estimator's table as an output, so each
    group is one rule."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for arch in study_block(config, study)["architectures"]:
        groups.setdefault(tuple(estimators(config, study, arch)), []).append(arch)
    return list(groups.items())


def check_config(config: dict) -> None:
    """Checks a JSON schema cannot express; raises ValueError naming the offending key."""
    for study, block in config["studies"].items():
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
            if by == "random" and not merged["select"].get("random", 0):
                raise ValueError(f"studies.{study}.select.by: 'random' selects only the random sample; set "
                                 f"select.random to its size, at least 1 (architecture {arch})")
            if by not in named + ["union", "random"]:
                raise ValueError(f"studies.{study}.select.by: '{by}' is not one of influence.methods {named} "
                                 f"or 'union' or 'random' (architecture {arch})")
            keep, train_steps = (merged.get("train") or {}).get("keep_checkpoints", 0), merged["train"].get("steps")
            if keep and train_steps is not None and keep > train_steps:
                raise ValueError(f"studies.{study}.train.keep_checkpoints (architecture {arch}): {keep} checkpoints of "
                                 f"a run of {train_steps} steps; keep at most one per step")
            length = length_keys(merged["loo"])
            if len(length) != 1:
                raise ValueError(f"studies.{study}.loo (architecture {arch}): set exactly one of loo.steps and "
                                 f"loo.epochs (null unsets one), got {'both' if length else 'neither'}")
        from .verdict import settings as verdict_settings  # pandas, not torch

        try:
            verdict_settings(block.get("verdict"))
        except ValueError as err:
            raise ValueError(f"studies.{study}.{err}") from None
        figures = block.get("figures", {})
        if figures.get("scatter_architecture", block["architectures"][0]) not in block["architectures"]:
            raise ValueError(f"studies.{study}.figures.scatter_architecture: '{figures['scatter_architecture']}' is not "
                             "one of the study's architectures")
        if "estimator" in figures and block["influence"]["methods"].get(figures["estimator"]) is None:
            raise ValueError(f"studies.{study}.figures.estimator: '{figures['estimator']}' is not one of influence.methods "
                             f"{sorted(block['influence']['methods'])}")
        for i, entry in enumerate(block.get("exclude", [])):
            if not entry:
                raise ValueError(f"studies.{study}.exclude[{i}]: an empty entry would exclude every cell; name a "
                                 "dataset, an arch or both")
            for key, known in (("dataset", block["datasets"]), ("arch", block["architectures"])):
                if key in entry and entry[key] not in known:
                    raise ValueError(f"studies.{study}.exclude[{i}].{key}: '{entry[key]}' is not one of the study's "
                                     f"{'datasets' if key == 'dataset' else 'architectures'}: {_listing(known)}")
        if block.get("enabled", True) and not cells(config, study):
            raise ValueError(f"studies.{study}.exclude: leaves no cell of the study")
        _check_test_point_specs(study, block)
        _check_method_blocks(study, block)
        for dataset_id, dataset_cfg in block["datasets"].items():
            try:
                sizes = expected_sizes(dataset_id, dataset_cfg)
            except ValueError as err:
                raise ValueError(f"studies.{study}.{err}") from None
            if sizes is not None:
                check_sizes(config, study, dataset_id, *sizes)
        labels = [decay_label(d) for d in block["decays"]]
        if len(set(labels)) != len(labels):
            raise ValueError(f"studies.{study}.decays: duplicate values {block['decays']}")
        if len(set(block["seeds"])) != len(block["seeds"]):
            raise ValueError(f"studies.{study}.seeds: duplicate values {block['seeds']}")
        for arch, patch in block.get("overrides", {}).items():
            if "seeds" in patch and len(set(patch["seeds"])) != len(patch["seeds"]):
                raise ValueError(f"studies.{study}.overrides.{arch}.seeds: duplicate values {patch['seeds']}")


RULE_KINDS = ("top_fraction", "top_k", "around_percentile")


def check_select_rules(config: dict) -> None:
    """Before the schema: each `select.rules` entry is one rule (top_fraction, top_k, or
    around_percentile with k). The schema says the same, but its message for it is unreadable."""
    for study, block in (config.get("studies") or {}).items():
        if not isinstance(block, dict):
            continue
        places = [(f"studies.{study}.select.rules", (block.get("select") or {}).get("rules"))]
        for arch, patch in (block.get("overrides") or {}).items():
            if isinstance(patch, dict):
                places.append((f"studies.{study}.overrides.{arch}.select.rules", (patch.get("select") or {}).get("rules")))
        for key, rules in places:
            for i, rule in enumerate(rules if isinstance(rules, list) else []):
                if not isinstance(rule, dict):
                    continue
                kinds = [kind for kind in RULE_KINDS if kind in rule]
                if len(kinds) > 1:
                    raise ValueError(f"{key}[{i}]: one rule takes one of {', '.join(RULE_KINDS)}, not {' and '.join(kinds)}; "
                                     f"write them as {len(kinds)} rules (the points re-trained are their union)")
                if not kinds:
                    raise ValueError(f"{key}[{i}]: {rule} is no rule; write {{top_fraction: f}}, {{top_k: k}} or "
                                     "{around_percentile: q, k: m}")
                if kinds == ["around_percentile"] and "k" not in rule:
                    raise ValueError(f"{key}[{i}]: around_percentile needs k, the number of points around it")
                if "k" in rule and kinds != ["around_percentile"]:
                    raise ValueError(f"{key}[{i}]: k belongs to around_percentile; with {kinds[0]} leave it out")


def _check_test_point_specs(study: str, block: dict) -> None:
    places = [(f"studies.{study}.test_points", block["test_points"])]
    places += [(f"studies.{study}.overrides.{arch}.test_points", patch["test_points"])
               for arch, patch in block.get("overrides", {}).items() if "test_points" in patch]
    for key, specs in places:
        for spec in specs:
            if (m := re.fullmatch(r"p(\d+(?:\.\d+)?)", spec)) and float(m.group(1)) > 100:
                raise ValueError(f"{key}: '{spec}' is not a percentile (p0 to p100)")
            if re.fullmatch(r"top0+", spec):
                raise ValueError(f"{key}: '{spec}' asks for no test points (top<k> needs k ≥ 1)")


def _check_method_blocks(study: str, block: dict) -> None:
    """Every estimator of the study block, and of each override, names a method."""
    places = [(f"studies.{study}.influence.methods", block["influence"]["methods"], None)]
    places += [(f"studies.{study}.overrides.{arch}.influence.methods", patch["influence"]["methods"], arch)
               for arch, patch in block.get("overrides", {}).items() if "methods" in patch.get("influence", {})]
    for key, methods, arch in places:
        for name, settings in methods.items():
            if settings is None:  # `name: null` drops the estimator
                continue
            merged = settings if arch is None else deep_merge(block["influence"]["methods"].get(name) or {}, settings)
            method = merged.get("method", name)
            if method not in estimator_registry.BUILT_IN and not estimator_registry.is_plugin(method):
                raise ValueError(f"{key}.{name}: the estimator '{name}' names no method (it has no `method:` and "
                                 f"'{name}' is not one); give it `method:` one of "
                                 f"{', '.join(estimator_registry.BUILT_IN)}, or an estimator class of your own, "
                                 f"'path/to/file.py:Class'")
            if estimator_registry.class_spec(method):  # a class: its options and requires, from its source
                options = {k: v for k, v in merged.items() if k != "method"}
                # the architectures this block reaches (an override that writes the estimator is its own place),
                # each with its own seeds (overrides.<arch>.seeds)
                overrides = block.get("overrides", {})
                reached = [arch] if arch is not None else [
                    a for a in block["architectures"]
                    if name not in ((overrides.get(a, {}).get("influence") or {}).get("methods") or {})]
                if arch is None and not reached:  # every architecture writes or drops it: checked there
                    continue
                for each in reached:
                    patch = overrides.get(each, {}) if each is not None else {}
                    cell_block = deep_merge(block, patch)
                    seeds_where = (f"studies.{study}.overrides.{each}.seeds" if "seeds" in patch
                                   else f"studies.{study}.seeds" + (f" (architecture {each})" if each else ""))
                    estimator_registry.check_estimator(name, {"method": method, **options}, f"{key}.{name}", cell_block,
                                                       seeds_where)
                if block.get("fuse_fit") and "several_models" in estimator_registry.requirements(method, key, options):
                    raise ValueError(f"{key}.{name}: the estimator '{method}' requires several trained models, which a "
                                     f"study with fuse_fit: true cannot give (each job trains one); set fuse_fit: false")


def read_config_files(paths) -> list[tuple[str, dict]]:
    """(name, parsed YAML) of each config file, as the checks that name a file want them."""
    import os

    import yaml

    out = []
    for path in paths:
        name = os.path.relpath(path)
        with open(path) as handle:
            out.append((str(path) if name.startswith("..") else name, yaml.safe_load(handle) or {}))
    return out


def check_method_options(config: dict, files: list[tuple[str, dict]]) -> None:
    """The options written with an estimator in one config file are options its method reads:
    `lissa: {rank: 3}` is a mistake, not a setting. The method is the one written in the same
    block, else the estimator's method in the merged `config`. Options that reach an estimator
    from another layer (config.yaml under a `--configfile` overlay that switches the method, or
    the study block under an override that does) are dropped by `estimators`, by design, and not
    checked. ValueError naming the file and the key."""
    for file_name, raw in files:
        for study, block in ((raw or {}).get("studies") or {}).items():
            if not isinstance(block, dict) or study not in config["studies"]:
                continue
            places = [(f"studies.{study}", block, None)]
            places += [(f"studies.{study}.overrides.{arch}", patch, arch)
                       for arch, patch in (block.get("overrides") or {}).items() if isinstance(patch, dict)]
            for key, part, arch in places:
                for name, settings in (((part.get("influence") or {}).get("methods")) or {}).items():
                    if not isinstance(settings, dict):
                        continue
                    final = (arch_config(config, study, arch) if arch else config["studies"][study])["influence"]["methods"]
                    method = settings.get("method") or (final.get(name) or {}).get("method", name)
                    if estimator_registry.class_spec(method):
                        continue  # checked against the class's source (_check_method_blocks)
                    read_by = {m: estimator_registry.options_read(m) for m in estimator_registry.BUILT_IN
                               if not estimator_registry.class_spec(m)}  # the inverse-Hessian methods
                    for option in settings:
                        if option == "method" or method not in read_by or option in read_by[method]:
                            continue
                        owners = [m for m, read in read_by.items() if option in read]
                        raise ValueError(
                            f"{file_name}: {key}.influence.methods.{name}.{option}: the {method} method does not read "
                            f"'{option}'" + (f" (an option of {', '.join(owners)})" if owners else "")
                            + f"; {method} reads {', '.join(read_by[method])}")


def test_point_count(spec: str) -> int:
    """How many test points a spec needs: k for top<k>, else 1."""
    m = re.fullmatch(r"top(\d+)", spec)
    return int(m.group(1)) if m else 1


def check_sizes(config: dict, study: str, dataset: str, n_train: int, n_test: int) -> None:
    """The split of `datasets.<dataset>` (n_train, n_test) is large enough for every cell of the
    study on it: its test points (top<k> needs k test points) and selection rules (top_k and
    around_percentile's k need that many training points). ValueError naming the key otherwise.
    Called at DAG build for the shipped loaders (data.registry.expected_sizes), and by
    prepare_data before it writes anything for a loader of one's own."""
    where = f"studies.{study}.datasets.{dataset}"
    if n_train < 1 or n_test < 1:
        raise ValueError(f"{where}: the split has {n_train} training and {n_test} test points; both need at least one "
                         "(test_fraction too close to 0 or 1?)")
    block = study_block(config, study)
    for arch in sorted({c["arch"] for c in cells(config, study) if c["dataset"] == dataset}, key=block["architectures"].index):
        patch = block.get("overrides", {}).get(arch, {})
        merged = arch_config(config, study, arch)
        key = f"studies.{study}.overrides.{arch}" if "test_points" in patch else f"studies.{study}"
        for spec in merged["test_points"]:
            if test_point_count(spec) > n_test:
                raise ValueError(f"{key}.test_points: '{spec}' asks for {test_point_count(spec)} test points, but "
                                 f"{dataset} has {n_test} ({where})")
        key = f"studies.{study}.overrides.{arch}" if "rules" in patch.get("select", {}) else f"studies.{study}"
        for i, rule in enumerate(merged["select"]["rules"]):
            k = rule.get("top_k", rule.get("k"))
            if k is not None and int(k) > n_train:
                name = "top_k" if "top_k" in rule else "k"
                raise ValueError(f"{key}.select.rules[{i}].{name}: asks for {k} training points to re-train, but "
                                 f"{dataset} has {n_train} ({where}; all of them: top_fraction: 1)")


def read_selected(path) -> list[int]:
    import json

    with open(path) as handle:
        return list(json.load(handle)["indices"])
