"""`fuse_fit`: a small net's train → test points → influence → drift control as one job.

The plan (`snakemake -n`) is checked on the tiny Iris config with and without fusing; a slow test
runs one cell both ways and requires the same files, to the last digit, and the split rules' logs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fragility.study import grid
from workflow_files import TWO_CELLS, copy_workflow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CONFIG_ARGS = ["--configfile", "configs/tiny.yaml", "configs/fuse.yaml"]
CELL = "results/iris/iris/mlp-d1-w5/wd0/seed0"
SPLIT_RULES = {"train", "test_points", "influence", "loo_drift"}


def overlay(fuse: bool, overrides: str = "") -> str:
    return TWO_CELLS.replace("    overrides:\n", f"    fuse_fit: {str(fuse).lower()}\n    overrides:\n") + (
        overrides or "      mlp-d1-w5: {}\n")


def snakemake(work: Path, *args, timeout=900) -> str:
    proc = subprocess.run([SNAKEMAKE, *args, *CONFIG_ARGS], cwd=work, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def job_counts(dry_run: str) -> dict[str, int]:
    table = dry_run.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_fused_rule_sets_group_architectures_by_their_estimators():
    config = {"studies": {
        "a": {"fuse_fit": True, "architectures": ["m1", "m2", "m3"],
              "influence": {"methods": {"exact": {}, "lissa": {"depth": 5}}},
              "overrides": {"m2": {"influence": {"methods": {"cg": {}}}}}},
        "b": {"architectures": ["m1"], "influence": {"methods": {"exact": {}}}},
    }}
    assert grid.fused_studies(config) == ["a"]
    assert grid.fused_rule_sets(config, "a") == [(("exact", "lissa"), ["m1", "m3"]),
                                                 (("exact", "lissa", "cg"), ["m2"])]


def test_the_plan_fuses_each_cells_fit_steps_only_where_asked(tmp_path):
    fused = copy_workflow(tmp_path / "fused", overlays={"fuse.yaml": overlay(True)})
    split = copy_workflow(tmp_path / "split", overlays={"fuse.yaml": overlay(False)})
    counts = job_counts(snakemake(fused, "-n", "iris"))
    assert counts["fit_iris"] == 2 and not SPLIT_RULES & set(counts), counts
    counts = job_counts(snakemake(split, "-n", "iris"))
    assert "fit_iris" not in counts and counts["train"] == 2 and counts["influence"] == 4, counts
    # a partial run by path: one estimator's table of one cell is made by that cell's fused job
    counts = job_counts(snakemake(fused, "-n", f"{CELL}/influence/lissa.parquet"))
    assert counts == {"prepare_data": 1, "fit_iris": 1}, counts
    # an architecture with its own estimators gets a fused rule of its own
    other = copy_workflow(tmp_path / "other", overlays={"fuse.yaml": overlay(
        True, "      mlp-d2-w5: {influence: {methods: {cg: {}}}}\n")})
    plan = snakemake(other, "-n", "iris")
    counts = job_counts(plan)
    assert counts["fit_iris_0"] == 1 and counts["fit_iris_1"] == 1, counts
    assert "results/iris/iris/mlp-d2-w5/wd0/seed0/influence/cg.parquet" in plan


def read_cell(work: Path) -> dict:
    """Every table and json file of the cell (json without its timing fields)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "second" not in k and k != "history"}
        return [strip(v) for v in value] if isinstance(value, list) else value

    out = {}
    for path in sorted((work / CELL).rglob("*")):
        if path.suffix == ".parquet":
            out[str(path.relative_to(work / CELL))] = pd.read_parquet(path)
        elif path.suffix == ".json":
            out[str(path.relative_to(work / CELL))] = strip(json.loads(path.read_text()))
    return out


@pytest.mark.slow
def test_a_fused_cell_writes_the_split_cells_files_and_logs(tmp_path):
    """One cell both ways: the same tables and records to the last digit, and the split rules' logs."""
    cells = {}
    for fuse in (False, True):
        work = copy_workflow(tmp_path / str(fuse), overlays={"fuse.yaml": overlay(fuse)})
        out = snakemake(work, "--cores", "1", f"{CELL}/correlations.parquet")
        assert ("rule fit_iris:" in out) == fuse
        cells[fuse] = read_cell(work)
    assert set(cells[True]) == set(cells[False]) and len(cells[True]) >= 9, sorted(cells[True])
    for name, value in cells[False].items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(cells[True][name], value, check_exact=True, obj=name)
        else:
            assert cells[True][name] == value, name
    logs = work / "results/logs/iris/iris/mlp-d1-w5/wd0/seed0"
    for name in ("train", "test_points", "influence_exact", "influence_lissa", "loo_drift"):
        assert (logs / f"{name}.log").stat().st_size > 0, name
    assert "all steps done" in (logs / "fit.log").read_text()
    assert (work / "results/benchmarks/iris/iris/mlp-d1-w5/wd0/seed0/fit.tsv").exists()


@pytest.mark.slow
def test_a_killed_fused_job_resumes_from_its_training_checkpoint_to_the_same_files(tmp_path):
    """SIGKILL Snakemake and its fused job mid-training (after a training checkpoint); after
    --unlock the re-run resumes the training from that checkpoint and writes the files of an
    uninterrupted run, to the last digit."""
    longer = "      mlp-d1-w5: {train: {steps: 20000, check_every: 500, checkpoint_every: 500}}\n"
    target = f"{CELL}/correlations.parquet"
    reference = copy_workflow(tmp_path / "reference", overlays={"fuse.yaml": overlay(True, longer)})
    snakemake(reference, "--cores", "1", target)
    work = copy_workflow(tmp_path / "killed", overlays={"fuse.yaml": overlay(True, longer)})
    with open(work / "killed_run.log", "w") as log:
        proc = subprocess.Popen([SNAKEMAKE, "--cores", "1", target, *CONFIG_ARGS], cwd=work, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        checkpoint, deadline = work / CELL / "train_checkpoint.pt", time.monotonic() + 600
        while not checkpoint.exists():
            assert proc.poll() is None, (work / "killed_run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no training checkpoint appeared"
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, as when a node dies
        proc.wait()
    assert not (work / CELL / "model.pt").exists(), "the training had finished before the kill"
    snakemake(work, "--unlock")
    out = snakemake(work, "--cores", "1", target)
    assert "rule fit_iris:" in out
    train_log = (work / "results/logs/iris/iris/mlp-d1-w5/wd0/seed0/train.log").read_text()
    assert re.search(r"resuming from checkpoint \S*train_checkpoint.pt at step [1-9]\d*", train_log), train_log[-2000:]
    assert not checkpoint.exists()
    resumed, uninterrupted = read_cell(work), read_cell(reference)
    assert set(resumed) == set(uninterrupted)
    for name, value in uninterrupted.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(resumed[name], value, check_exact=True, obj=name)
        else:
            assert resumed[name] == value, name
