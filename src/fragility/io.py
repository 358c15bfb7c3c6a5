"""Safe reading and writing: atomic writes, validated checkpoints, clear errors."""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path


class CorruptFileError(RuntimeError):
    """A file exists but cannot be read, or lacks the keys it must have."""


class UnsafeFileError(CorruptFileError):
    """A torch file holds objects other than tensors, numbers, strings, lists and dicts: loading it
    would run code, so it is refused."""


def rerun_hint(path) -> str:
    """The command that re-makes `path`. Deleting a per-cell file is not enough: Snakemake does not
    re-create an intermediate file whose downstream outputs exist, so the rule must be forced."""
    return f"re-make it with `snakemake --cores 1 <your targets> --forcerun {path}` (deleting it is not enough)"


def _umask() -> int:
    """The process's umask (read by setting it and putting it back; Linux also shows it in /proc)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    A job killed mid-write therefore never leaves a half-written file under the final name. The
    file gets the mode a plain `open(path, "w")` would give it, 0o666 less the umask (mkstemp
    makes 0o600 files, which nobody else in a shared project could read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"expected file is missing: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); {rerun_hint(path)}") from err


def save_torch(obj, path) -> None:
    with atomic_path(path) as tmp:
        import torch

        torch.save(obj, tmp)


def load_torch(path, required_keys=(), map_location="cpu", remedy: str | None = None) -> dict:
    """Load a torch file and check it holds `required_keys`; raise CorruptFileError otherwise.

    Loads with `weights_only=True`: only tensors, numbers, strings, lists, tuples and dicts are
    unpickled, so a file planted in a shared results or scratch folder cannot run code as the
    reader (UnsafeFileError). Everything this project saves is of those types. `remedy` ends the
    error messages (default: the command that re-makes a workflow output, `rerun_hint`).
    """
    import pickle

    import torch

    path = Path(path)
    remedy = remedy or rerun_hint(path)
    if not path.exists():
        raise FileNotFoundError(f"expected file is missing: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message goes on to suggest weights_only=False: the one thing not to do here
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise UnsafeFileError(
                f"refusing to load {path}: it holds a pickled {found.group(1)}, not only tensors, numbers, strings, "
                f"lists and dicts, and unpickling it could run code. This project never writes such files; if you "
                f"did not put it there, someone else did. Remove it; {remedy}"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", text + "\n")
        raise CorruptFileError(f"cannot read {path}: not a torch file as this project writes them "
                               f"({detail.group(1).strip() if detail else type(err).__name__}); {remedy}") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CorruptFileError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {err}. "
            f"The file is corrupt or truncated; {remedy}"
        ) from err
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} holds a {type(obj).__name__}, not a dict of named entries; {remedy}")
    missing = [k for k in required_keys if k not in obj]
    if missing:
        raise CorruptFileError(f"checkpoint {path} lacks keys {missing}; {remedy}")
    return obj


def write_parquet(frame, path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(frame, path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def plain(value):
    """`value` with numpy scalars and arrays (at any depth of dicts, lists and tuples) turned into
    Python numbers and lists, so that it can be saved and loaded with `weights_only=True`."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if type(value).__module__ == "numpy":
        return value.tolist()
    return value
