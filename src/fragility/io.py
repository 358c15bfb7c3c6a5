"""Safe reading and writing: atomic writes, validated checkpoints, clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path



class CorruptFileError(RuntimeError):
    """A file exists but cannot be read, or lacks the keys it must have."""


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    A job killed mid-write therefore never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        raise CorruptFileError(f"{path} is not valid JSON ({err}); delete it and re-run") from err


def save_torch(obj, path) -> None:
    with atomic_path(path) as tmp:
        import torch

        torch.save(obj, tmp)


def load_torch(path, required_keys=(), map_location="cpu") -> dict:
    """Load a torch file and check it holds `required_keys`; raise CorruptFileError otherwise."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"expected file is missing: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CorruptFileError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {err}. "
            "The file is corrupt or truncated; delete it and re-run the rule that makes it."
        ) from err
    missing = [k for k in required_keys if k not in obj]
    if missing:
        raise CorruptFileError(f"checkpoint {path} lacks keys {missing}; delete it and re-run")
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
