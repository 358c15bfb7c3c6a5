"""Callables named in the config: `"package.module:function"` (a module on PYTHONPATH) or
`"path/to/file.py:function"` (a file, relative to the working directory).

The shipped models and dataset loaders are named the same way (`models/registry.py`,
`data/registry.py`; estimator classes: `estimators/registry.py`), so a user's own factory or loader goes through exactly the code the
built-in ones do. `parameters` reads a callable's signature from its source with `ast`, without
importing it: building the DAG neither imports torch nor runs a user's code. `load` imports it,
in a job.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path


class PluginError(ValueError):
    """A config entry names a callable that cannot be found or used; the message names the key."""


def split_spec(spec: str, key: str) -> tuple[str, str]:
    """("module or file", "function") of `spec`, or PluginError naming `key`."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise PluginError(f"{key}: '{spec}' must be written 'package.module:function' or 'path/to/file.py:function'")
    where, name = spec.split(":")
    if not name.isidentifier():
        raise PluginError(f"{key}: '{name}' in '{spec}' is not a Python name")
    return where, name


def source_file(spec: str, key: str) -> Path:
    """The .py file that defines the callable of `spec`, found without executing it."""
    where, _ = split_spec(spec, key)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise PluginError(f"{key}: file '{where}' does not exist (paths are relative to the working directory, "
                              f"{Path.cwd()})")
        return path
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError) as err:
        raise PluginError(f"{key}: module '{where}' cannot be found ({err})") from None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        raise PluginError(f"{key}: module '{where}' cannot be found on PYTHONPATH")
    return Path(found.origin)


def parameters(spec: str, key: str) -> list[str]:
    """Names of the parameters of the function (or class constructor) `spec`, from its source;
    `**kwargs` reads as the name "**"."""
    path = source_file(spec, key)
    _, name = split_spec(spec, key)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise PluginError(f"{key}: {path} has a syntax error at line {err.lineno}: {err.msg}") from None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return _names(node.args)
        if isinstance(node, ast.ClassDef) and node.name == name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return _names(item.args)[1:]
            return []
    raise PluginError(f"{key}: {path} defines no top-level function or class '{name}'")


def _names(args: ast.arguments) -> list[str]:
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return names + (["**"] if args.kwarg else [])


def check_options(spec: str, key: str, options: dict, supplied: tuple[str, ...] = (), options_key: str | None = None,
                  label: str | None = None) -> None:
    """PluginError unless the callable takes every key of `options` (besides the `supplied`
    arguments the project passes itself) and each of `supplied`. An unknown option is reported
    under `options_key` (default `key`), the callable as `label` (default its import path)."""
    accepted = parameters(spec, key)
    missing = [name for name in supplied if name not in accepted and "**" not in accepted]
    if missing:
        raise PluginError(f"{key}: '{spec}' must take the argument(s) {', '.join(missing)}; it takes "
                          f"({', '.join(accepted)})")
    if "**" in accepted:
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = [a for a in accepted if a not in supplied]
        raise PluginError(f"{options_key or key}: {', '.join(unknown)} is not an option of {label or repr(spec)}, "
                          f"which takes {', '.join(takes) if takes else 'no options'}")


def load(spec: str, key: str):
    """Import and return the callable of `spec`."""
    where, name = split_spec(spec, key)
    if where.endswith(".py"):
        path = source_file(spec, key).resolve()
        module_name = f"fragility_plugin_{path.stem}_{abs(hash(str(path)))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as err:
                raise PluginError(f"{key}: importing {path} failed: {type(err).__name__}: {err}") from err
            sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(where)
        except Exception as err:
            raise PluginError(f"{key}: importing module '{where}' failed: {type(err).__name__}: {err}") from err
    function = getattr(module, name, None)
    if function is None or not callable(function):
        raise PluginError(f"{key}: '{where}' has no callable '{name}'")
    return function


def call(spec: str, key: str, *args, **kwargs):
    """`load(spec)(*args, **kwargs)`, with an exception raised inside it named by `key`."""
    function = load(spec, key)
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as err:
        raise PluginError(f"{key}: '{spec}' cannot be called with these arguments: {err}") from None
    try:
        return function(*args, **kwargs)
    except Exception as err:
        if type(err).__module__.startswith("fragility"):  # the project's own errors say what to do
            raise
        raise PluginError(f"{key}: '{spec}' raised {type(err).__name__}: {err}") from err
