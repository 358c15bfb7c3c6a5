"""Estimators by config name: `influence.methods.<name>.method` is a built-in method (exact, cg,
lissa, arnoldi, kfac, ekfac, identity: estimators/inverse_hessian.py; the estimator's name when
`method` is left out) or an Estimator class of the user's own, `"path/to/file.py:Class"` or
`"package.module:Class"`, resolved by the plugin machinery that resolves models and loaders
(plugins.py).

Building the DAG reads a class's options (its `__init__` keyword arguments, or the fields of a
nested `Options` dataclass) and its `requires` from the source, without importing it or torch
(`check_estimator`, `options_read`, `requirements`); a job imports it (`make_estimator`).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from .. import plugins
from ..engine.methods import NOTES, OPTIONS_READ, REQUIRES
from .base import REQUIREMENTS

# built-in estimators that are classes of their own (not inverse-Hessian methods): name → class,
# whose options and requirements are read from its source exactly as a user's class's are
BUILT_IN_CLASSES = {
    "grad_cosine": "fragility.estimators.similarity:GradientCosine",
    "representer": "fragility.estimators.representer:RepresenterPoints",
    "tracin": "fragility.estimators.tracin:TracIn",
    "trak": "fragility.estimators.trak:TRAK",
    "ensemble": "fragility.estimators.ensemble:Ensemble",
}
BUILT_IN = tuple(OPTIONS_READ) + tuple(BUILT_IN_CLASSES)


def method_of(name: str, settings: dict | None) -> str:
    """The method of estimator `name`: its `method:`, else its name."""
    return (settings or {}).get("method", name)


def is_plugin(method: str) -> bool:
    """Does `method` name a class of the user's own ("file.py:Class", "module:Class")?"""
    return isinstance(method, str) and ":" in method


def class_spec(method: str) -> str | None:
    """The "module:Class" or "file.py:Class" of an estimator that is a class of its own (a built-in
    of BUILT_IN_CLASSES or a user's); None for an inverse-Hessian method."""
    return BUILT_IN_CLASSES.get(method) or (method if is_plugin(method) else None)


@functools.lru_cache(maxsize=64)
def _parsed(path: str, modified: int) -> ast.Module:
    """The syntax tree of a source file, parsed once per version (a DAG build asks many times)."""
    return ast.parse(Path(path).read_text(), filename=path)


def _source_version(spec: str, key: str) -> tuple[str, int]:
    path = plugins.source_file(spec, key)
    return str(path.resolve()), path.stat().st_mtime_ns


def _class_node(spec: str, key: str) -> ast.ClassDef:
    path = plugins.source_file(spec, key)
    _, name = plugins.split_spec(spec, key)
    try:
        tree = _parsed(*_source_version(spec, key))
    except SyntaxError as err:
        raise plugins.PluginError(f"{key}: {path} has a syntax error at line {err.lineno}: {err.msg}") from None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise plugins.PluginError(f"{key}: {path} defines no top-level class '{name}' (an estimator is a class, "
                              f"a subclass of fragility.estimators.base.Estimator)")


def options_read(method: str, key: str = "method") -> tuple[str, ...] | None:
    """The options `method` reads: a built-in's from engine/methods.py; a class's keyword arguments
    of `__init__` (after self), or the annotated fields of its nested `Options` class, or none.
    None: it takes `**options`, anything."""
    spec = class_spec(method)
    if spec is None:
        if method not in OPTIONS_READ:
            raise plugins.PluginError(f"{key}: unknown estimator method '{method}'; known: {', '.join(BUILT_IN)}, or "
                                      f"an estimator class of your own written 'path/to/file.py:Class'")
        return OPTIONS_READ[method]
    node = _class_node(spec, key)
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs][1:]
            return None if args.kwarg else tuple(names)
    options = next((item for item in node.body if isinstance(item, ast.ClassDef) and item.name == "Options"), None)
    for item in node.body:  # `Options = SomeDataclass`, a class of the same file
        if (isinstance(item, ast.Assign) and isinstance(item.value, ast.Name)
                and any(isinstance(t, ast.Name) and t.id == "Options" for t in item.targets)):
            module = _parsed(*_source_version(spec, key))
            options = next((c for c in module.body if isinstance(c, ast.ClassDef) and c.name == item.value.id), None)
    if options is None:
        return ()
    return tuple(s.target.id for s in options.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))


def _class_literal(node: ast.ClassDef, name: str, spec: str, key: str):
    """The literal value of class attribute `name` (None when the class writes none)."""
    for item in node.body:
        targets = item.targets if isinstance(item, ast.Assign) else [item.target] if isinstance(item, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and item.value is not None:
            try:
                return ast.literal_eval(item.value)
            except ValueError:
                raise plugins.PluginError(f"{key}: '{spec}' must write `{name}` as a literal") from None
    return None


def requirements(method: str, key: str = "method", options: dict | None = None) -> tuple[str, ...]:
    """What `method` needs (keys of base.REQUIREMENTS): an inverse-Hessian method's from
    engine/methods.py; a class's from its `requires = (...)` literal, plus those its
    `requires_by_option = {option: {value: (...)}}` literal names for the `options` given."""
    spec = class_spec(method)
    if spec is None:
        return REQUIRES.get(method, ())
    node = _class_node(spec, key)
    needs = _class_literal(node, "requires", spec, key) or ()
    needs = (needs,) if isinstance(needs, str) else tuple(needs)
    for option, by_value in (_class_literal(node, "requires_by_option", spec, key) or {}).items():
        extra = by_value.get((options or {}).get(option), ())
        needs += (extra,) if isinstance(extra, str) else tuple(extra)
    for option in _estimator_options(node, spec, key):  # an inner estimator's needs are the class's too
        inner = (options or {}).get(option)
        if isinstance(inner, dict) and "method" in inner:
            needs += requirements(inner["method"], f"{key}.{option}",
                                  {k: v for k, v in inner.items() if k != "method"})
    unknown = [n for n in needs if n not in REQUIREMENTS]
    if unknown:
        raise plugins.PluginError(f"{key}: '{method}' requires {', '.join(map(repr, unknown))}, which the workflow "
                                  f"does not know; known: {', '.join(REQUIREMENTS)}")
    return tuple(dict.fromkeys(needs))


def _estimator_options(node: ast.ClassDef, spec: str, key: str) -> tuple[str, ...]:
    """The options of a class whose value is an estimator's config block (`estimator_options`)."""
    names = _class_literal(node, "estimator_options", spec, key) or ()
    return (names,) if isinstance(names, str) else tuple(names)


# what an inner estimator (fitted on one trained model) cannot require
ONE_MODEL_CANNOT = ("checkpoints", "several_models")


def check_inner_estimators(method: str, settings: dict, key: str) -> None:
    """An estimator block inside `method`'s block (`estimator_options`, e.g. ensemble's
    `estimator`): it names its method, its options are ones that method reads, it needs no more
    than one trained model, and it is no ensemble itself. PluginError naming `key.<option>...`."""
    spec = class_spec(method)
    if spec is None:
        return
    for option in _estimator_options(_class_node(spec, key), spec, key):
        where = f"{key}.{option}"
        inner = settings.get(option)
        if not isinstance(inner, dict) or "method" not in inner:
            raise plugins.PluginError(f"{where}: the estimator '{method}' needs the inner estimator's block with its "
                                      f"method, e.g. {option}: {{method: lissa, depth: 200}}; got {inner!r}")
        inner_method = inner["method"]
        if inner_method not in BUILT_IN and not is_plugin(inner_method):
            options_read(inner_method, f"{where}.method")  # unknown: the message that lists the methods
        inner_spec = class_spec(inner_method)
        if inner_spec is not None and _estimator_options(_class_node(inner_spec, f"{where}.method"), inner_spec, where):
            raise plugins.PluginError(f"{where}.method: '{inner_method}' holds an estimator itself; an ensemble "
                                      f"of ensembles is not offered")
        check_estimator(option, inner, where)
        needs = requirements(inner_method, where, {k: v for k, v in inner.items() if k != "method"})
        for need in needs:
            if need in ONE_MODEL_CANNOT:
                raise plugins.PluginError(f"{where}: the estimator '{inner_method}' requires {REQUIREMENTS[need]}, "
                                          f"which one member of '{method}' (one trained model) cannot give; "
                                          "choose an inner estimator fitted on θ* alone")


def notes(method: str, key: str = "method") -> tuple[str, str] | None:
    """(what `method` computes, why it might fail), one short line each, for the report: an
    inverse-Hessian method's from engine/methods.py, a class's from its `notes = (..., ...)`
    literal, read from the source (a class of the user's own may write none: None)."""
    spec = class_spec(method)
    if spec is None:
        return NOTES.get(method)
    written = _class_literal(_class_node(spec, key), "notes", spec, key)
    return tuple(written) if written else None


def check_estimator(name: str, settings: dict, key: str, study_block: dict | None = None,
                    seeds_where: str = "the study") -> None:
    """At DAG build: the method of estimator `name` exists (file and class, from the source), the
    options written in `settings` are options it reads (an inner estimator's block too:
    `check_inner_estimators`), and what it requires the study can give: `study_block` is the
    block of one architecture (overrides merged in), whose `seeds` count (`seeds_where` names them).
    PluginError naming `key` (the estimator's config key)."""
    method = method_of(name, settings)
    read = options_read(method, f"{key}.method" if "method" in settings else key)
    unknown = sorted(set(settings) - {"method"} - set(read if read is not None else settings))
    if unknown:
        raise plugins.PluginError(f"{key}.{unknown[0]}: not an option of the estimator '{method}', which reads "
                                  f"{', '.join(read) if read else 'no options'}")
    check_inner_estimators(method, settings, key)
    for need in requirements(method, key, settings):
        if need == "checkpoints" and study_block is not None and not (study_block.get("train") or {}).get("keep_checkpoints"):
            raise plugins.PluginError(f"{key}: the estimator '{method}' requires checkpoints of the training run; "
                                      f"set the study's train.keep_checkpoints (how many, evenly spaced)")
        if need == "several_models" and study_block is not None and len(study_block.get("seeds", [])) < 2:
            raise plugins.PluginError(f"{key}: the estimator '{method}' requires several trained models (every seed "
                                      f"of a dataset × architecture × decay), and {seeds_where} has one seed")


def method_settings(name: str, settings: dict) -> dict:
    """An estimator's config block (`method` + options) less the options its method does not read:
    a block merged from a per-architecture override may carry another method's options."""
    method = method_of(name, settings)
    known = class_spec(method) is not None or method in OPTIONS_READ
    read = options_read(method, f"estimator '{name}'") if known else None
    read = tuple(settings) if read is None else read
    return {k: v for k, v in settings.items() if k == "method" or k in read}


def estimator_class(method: str, key: str = "method"):
    """The Estimator class of `method` (imports it)."""
    from .base import Estimator

    spec = class_spec(method)
    if spec is None:
        options_read(method, key)  # a known method
        from .inverse_hessian import InverseHessianEstimator

        return InverseHessianEstimator
    cls = plugins.load(spec, key)
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise plugins.PluginError(f"{key}: '{method}' is not a subclass of fragility.estimators.base.Estimator")
    return cls


def make_estimator(name: str, settings: dict, key: str | None = None):
    """An estimator built from its config block: `InverseHessianEstimator(method, **options)` for
    a built-in method, `Class(**options)` for a class of the user's own."""
    key = key or f"influence.methods.{name}"
    method = method_of(name, settings)
    options = {k: v for k, v in settings.items() if k != "method"}
    cls = estimator_class(method, f"{key}.method")
    if class_spec(method) is None:
        return cls(method, **options)
    try:
        estimator = cls(**options)
    except TypeError as err:
        raise plugins.PluginError(f"{key}: '{method}' cannot be built with options {sorted(options)}: {err}") from None
    if not hasattr(estimator, "method"):
        estimator.method = method  # how messages name it
    return estimator
