"""benchmarks/gpu_check.py, the prepared GPU check, tested on CPU: the Table 1 comparison, the time
box, the carried requirements, and the whole run in --dry mode (the same orchestration at toy size)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def table(rows):
    return pd.DataFrame(rows, columns=["dataset", "model", "estimator", "A P", "A S"])


def test_compare_table1_reports_each_cell_change():
    cpu = table([["MNIST", "Small CNN", "exact", "0.87 [0.71, 0.95]", "0.50 [0.2, 0.7]"],
                 ["MNIST", "LeNet", "lissa", "0.30 [0.1, 0.5]", "not trained"],
                 ["CIFAR", "VGG13", "lissa", "0.10", "0.20"]])
    gpu = table([["MNIST", "Small CNN", "exact", "0.872 [0.70, 0.95]", "0.41 [0.2, 0.7]"],
                 ["MNIST", "LeNet", "lissa", "0.30 [0.1, 0.5]", "-0.05 [-0.3, 0.2]"]])
    out = gpu_check.compare_table1(cpu, gpu, tolerance=0.005)
    cell = {(r.model, r.column): r for r in out.itertuples()}
    assert len(out) == 6
    assert math.isclose(cell["Small CNN", "A S"].change, -0.09, abs_tol=1e-12) and cell["Small CNN", "A S"].moved
    assert math.isclose(cell["Small CNN", "A P"].change, 0.002, abs_tol=1e-12) and not cell["Small CNN", "A P"].moved
    assert cell["LeNet", "A P"].change == 0 and not cell["LeNet", "A P"].moved
    assert math.isnan(cell["LeNet", "A S"].change) and cell["LeNet", "A S"].moved   # a flag became a number
    assert cell["VGG13", "A P"].moved and math.isnan(cell["VGG13", "A P"].change)   # only in the CPU table
    assert (out.model.iloc[0], out.column.iloc[0]) == ("Small CNN", "A S")   # largest change first
    text = gpu_check.comparison_text(out)
    assert text.startswith("4 of 6 cells moved") and "Small CNN A S" in text and "largest |change| 0.09" in text


def test_cell_value_reads_the_leading_number():
    assert gpu_check.cell_value("0.87 [0.71, 0.95]") == 0.87
    assert gpu_check.cell_value("-1e-3") == -0.001
    assert math.isnan(gpu_check.cell_value("not trained")) and math.isnan(gpu_check.cell_value(None))


def test_a_part_past_its_time_box_is_killed_with_its_children(tmp_path):
    record = gpu_check.boxed(["bash", "-c", "sleep 60 & sleep 60"], tmp_path / "log", 1, dict(os.environ))
    assert record["timed_out"] and record["seconds"] < 15
    assert "time box 1 s" in (tmp_path / "log").read_text()


def test_carried_wheels_are_the_workflow_tools_without_the_torch_stack():
    pins = {p.split("==")[0] for p in gpu_check.carried_requirements()}
    assert {"snakemake", "mlxtend", "pytest", "pytest-xdist", "execnet", "snakemake-executor-plugin-slurm"} <= pins
    assert not pins & {"torch", "torchvision", "numpy", "pandas", "triton"}
    assert not any(p.startswith("nvidia-") for p in pins)


@pytest.mark.slow
def test_dry_run_packs_every_part_and_a_summary(tmp_path):
    """`gpu_check.sh --dry`: every part runs on CPU (the workflow parts as `snakemake -n`) and the
    archive holds each part's result file and the summary."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OUT", None)
    got = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--budget", "600", "--out",
                          str(tmp_path / "out"), "--work", str(tmp_path / "work")], capture_output=True, text=True,
                         env=env, timeout=900)
    assert got.returncode == 0, got.stderr[-3000:]
    [archive] = (tmp_path / "out").iterdir()  # the archive alone
    with tarfile.open(archive) as tar:
        names = {Path(n).name: n for n in tar.getnames()}
        for name in ("summary.json", "summary.md", "setup.log", "a_pytest.log", "b_tiny.log", "c_quick.log",
                     "d_cells.csv", "e_hessian.json", "lenet-cifar.metrics.json"):
            assert name in names, name
        summary = json.load(tar.extractfile(names["summary.json"]))
        cells = pd.read_csv(tar.extractfile(names["d_cells.csv"]))
        page = tar.extractfile(names["summary.md"]).read().decode()
    assert summary["dry"] and summary["environment"]["torch"]
    assert list(summary["parts"]) == ["a", "b", "e", "d", "c"]
    for name, part in summary["parts"].items():
        assert part["rc"] == 0 and not part["timed_out"], (name, part)
    assert summary["parts"]["e"]["result"]["seconds"] > 0
    assert list(cells.job) == ["train", "train (again, warm)", "test_points", "influence lissa", "influence ekfac",
                               "influence identity", "loo_chunk", "pbrf_chunk"]
    assert (cells.status == "ok").all() and (cells.seconds > 0).all()
    assert "- part c: rc 0" in page and "| lenet-cifar | " in page   # part d's table of seconds / peak memory
