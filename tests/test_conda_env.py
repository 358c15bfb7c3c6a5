"""The conda route (`snakemake --sdm conda`): envs/environment.yaml pins what envs/requirements.lock
pins, and its post-deploy script installs the library itself, so that no script and no rule file
inserts a path to find it.

Creating the conda environment needs conda and its package channels, which this project's
machines cannot reach (only PyPI); these tests run the post-deploy script in a fresh, empty
Python environment instead, the step Snakemake runs inside a new conda environment.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import yaml

from workflow_files import REPO, copy_workflow

ENV_FILE = REPO / "envs" / "environment.yaml"
POST_DEPLOY = REPO / "envs" / "environment.post-deploy.sh"


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)\s*", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_environment_pins_equal_the_lock():
    env = yaml.safe_load(ENV_FILE.read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, env["dependencies"]
    in_env = pins(pip_lists[0])
    in_lock = pins((REPO / "envs" / "requirements.lock").read_text().splitlines())
    assert in_env == in_lock, {k: (in_env.get(k), in_lock.get(k)) for k in in_env.keys() ^ in_lock.keys()}
    assert "setuptools" in in_env  # the editable install of the library builds offline with it
    assert "python=3.11" in env["dependencies"]


def test_no_script_or_rule_inserts_a_library_path():
    files = [*(REPO / "workflow").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"), REPO / "Snakefile"]
    offending = [str(p.relative_to(REPO)) for p in files if re.search(r"sys\.path\.(insert|append)", p.read_text())]
    assert not offending, offending


def test_every_script_rule_runs_in_the_conda_environment():
    """Each rule that runs a script (a cluster job) names CONDA_ENV, the file the post-deploy script
    sits next to; the post-deploy script is found by Snakemake under that name."""
    assert POST_DEPLOY.name == ENV_FILE.name.replace(".yaml", ".post-deploy.sh")
    assert os.access(POST_DEPLOY, os.X_OK)
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'CONDA_ENV = "../../envs/environment.yaml"' in common
    rules = 0
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^(?=(?:rule|checkpoint) )", smk.read_text(), flags=re.M):
            if re.search(r"^    script:", block, re.M):
                rules += 1
                assert re.search(r"^    conda:\n        CONDA_ENV$", block, re.M), f"{smk.name}: {block[:80]}"
    assert rules >= 6


def fresh_environment(path: Path) -> Path:
    """An empty Python environment with only pip and setuptools (copied from this one, no download)."""
    venv.create(path, with_pip=False, symlinks=True)
    assert int(importlib.metadata.version("setuptools").split(".")[0]) >= 71, \
        "setuptools from envs/requirements.lock is needed (bash tools/setup.sh)"
    here = Path(sysconfig.get_paths()["purelib"])
    there = Path(subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; "
                                 "print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    for entry in here.iterdir():
        if re.match(r"(pip|setuptools|pkg_resources|_distutils_hack)([-.]|$)|distutils-precedence\.pth$", entry.name):
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, there / entry.name)
    return path / "bin" / "python"


def test_post_deploy_script_installs_the_workflow_library_into_a_fresh_environment(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    python = fresh_environment(tmp_path / "env")
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # as Snakemake runs it: inside the environment (its bin first on PATH), from the working directory
    environ["PATH"] = f"{python.parent}{os.pathsep}{environ.get('PATH', '')}"
    before = subprocess.run([str(python), "-c", "import fragility"], capture_output=True, text=True, env=environ,
                            cwd=tmp_path)
    assert before.returncode != 0 and "No module named 'fragility'" in before.stderr
    deploy = subprocess.run(["bash", str(work / "envs" / "environment.post-deploy.sh")], cwd=work, env=environ,
                            capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    probe = ("import fragility, importlib.metadata as m, sys; "
             "print(fragility.__file__); print(m.version('fragility')); print(sys.prefix)")
    after = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=environ, cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    where, version, prefix = after.stdout.split()
    assert Path(where).resolve() == (work / "src" / "fragility" / "__init__.py").resolve()
    assert version == "0.1.0" and Path(prefix).resolve() == (tmp_path / "env").resolve()
    # editable: a change in the workflow's src/ is what the environment imports next, no re-install
    (work / "src" / "fragility" / "_probe_module.py").write_text("VALUE = 41 + 1\n")
    probe = subprocess.run([str(python), "-c", "from fragility._probe_module import VALUE; print(VALUE)"],
                           capture_output=True, text=True, env=environ, cwd=tmp_path)
    assert probe.stdout.strip() == "42", probe.stderr


def test_post_deploy_script_refuses_a_directory_that_is_not_the_repository(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "FRAGILITY_ROOT"}
    proc = subprocess.run(["bash", str(POST_DEPLOY)], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "is not the repository root" in proc.stderr and "FRAGILITY_ROOT" in proc.stderr


def test_workflow_stops_with_a_clear_message_when_the_library_is_not_installed(tmp_path):
    """Without an installed library (and no PYTHONPATH), building the DAG says how to install it."""
    work = copy_workflow(tmp_path / "wf")
    python = Path(sys.executable)
    # this interpreter, with the library's editable-install hooks hidden: -S skips site-packages'
    # .pth files, then the site-packages are added back as plain paths
    purelib = sysconfig.get_paths()["purelib"]
    code = (f"import sys; sys.path.append({purelib!r}); "
            "from snakemake.cli import main; sys.argv = ['snakemake', '-n', '--cores', '1']; main()")
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(python), "-S", "-c", code], cwd=work, env=environ, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "the library 'fragility' is not installed" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
