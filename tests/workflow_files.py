"""Copying the workflow into a scratch directory, for the tests that run Snakemake itself."""

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what a run needs: the Snakefile, configs, rules, profiles (and the `slurm` link to one), envs, the library
# (with pyproject.toml, which envs/environment.post-deploy.sh installs)
WORKFLOW_FILES = ["Snakefile", "config.yaml", "configs", "workflow", "profiles", "slurm", "envs", "src", "pyproject.toml"]

# the tests' two-cell grid over configs/tiny.yaml: mlp-d1-w5 and mlp-d2-w5 at decay 0; a test adds
# its own per-architecture overrides
TWO_CELLS = """
studies:
  iris:
    architectures: [mlp-d1-w5, mlp-d2-w5]
    decays: [0.0]
    overrides:
"""


def copy_workflow(dest: Path, source: Path = REPO, state: bool = False, overlays: dict[str, str] | None = None) -> Path:
    """Copy the workflow files from `source` into `dest` (links stay links); with `state`, also the
    results/ and .snakemake/ of a finished copy. `overlays` = {file name: YAML} written to configs/."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES + (["results", ".snakemake"] if state else []):
        src = source / name
        if src.is_symlink() or src.is_file():
            shutil.copy2(src, dest / name, follow_symlinks=False)
        elif src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "locks"))
    for file_name, text in (overlays or {}).items():
        (dest / "configs" / file_name).write_text(text)
    return dest
