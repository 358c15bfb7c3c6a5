"""Partial reruns, kill/resume and config errors of the workflow, on the local executor.

Every test works in its own copy of the workflow (Snakefile, config.yaml, configs/, workflow/,
profiles/) under tmp_path and runs the installed `fragility` package. One run of a tiny Iris grid
(2 architectures × 1 decay; configs/tiny.yaml plus OVERLAY) is made once per module, the way a
user makes it after a crash: started, SIGKILLed mid-run, started again. The other tests copy that
finished run and mostly ask Snakemake for its plan (`-n`, `--summary`), which costs no training.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from workflow_files import REPO, TWO_CELLS
from workflow_files import copy_workflow as copy_files

pytestmark = pytest.mark.slow  # minutes: real workflow runs

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# 2 cells: mlp-d1-w5 and mlp-d2-w5 at decay 0. mlp-d1-w5 re-trains in chunks of 10, so its
# ~20 selected points make two LOO jobs (chunk0000, chunk0001). One job per step (fuse_fit: false,
# the image studies' layout); the fused layout of small nets is tested in test_fused.py.
OVERLAY = (TWO_CELLS.replace("    overrides:\n", "    fuse_fit: false\n    overrides:\n")
           + "      mlp-d1-w5: {loo: {chunk_size: 10}}\n")
CONFIG_ARGS = ["--configfile", "configs/tiny.yaml", "configs/rerun.yaml"]
TARGET = "results/iris/correlations.parquet"  # the study tables (aggregate), no figures
CELL_A = "results/iris/iris/mlp-d1-w5/wd0/seed0"
CELL_B = "results/iris/iris/mlp-d2-w5/wd0/seed0"
RUN_TIMEOUT = 900  # seconds; a tiny run takes 1-2 minutes on an idle 2-core machine


def copy_workflow(dest: Path, source: Path = REPO, with_state: bool = False) -> Path:
    """The workflow with the rerun overlay, or a finished copy with its results/ and .snakemake/."""
    if with_state:
        return copy_files(dest, source, state=True)
    return copy_files(dest, source, overlays={"rerun.yaml": OVERLAY})


def snakemake(workdir: Path, *args, configs=(), timeout=RUN_TIMEOUT, check=True) -> subprocess.CompletedProcess:
    """Run snakemake in workdir on the tiny config (+ `configs`); stdout holds stdout and stderr."""
    cmd = [SNAKEMAKE, *args, *CONFIG_ARGS, *configs]
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def summary(workdir: Path, configs=()) -> pd.DataFrame:
    """Snakemake's plan for every output file: columns output_file, rule, status, plan."""
    out = snakemake(workdir, TARGET, "--summary", "--cores", "1", configs=configs).stdout
    lines = [line for line in out.splitlines() if line.count("\t") >= 5]
    rows = [line.split("\t") for line in lines]
    frame = pd.DataFrame(rows[1:], columns=rows[0])
    assert set(frame.plan) <= {"update pending", "no update"}, set(frame.plan)
    return frame


def pending(workdir: Path, configs=()) -> set[str]:
    frame = summary(workdir, configs)
    return set(frame.output_file[frame.plan == "update pending"])


def planned_outputs(dry_run_output: str) -> set[str]:
    """Output files of the jobs a dry run lists (with rerun-incomplete: also the incomplete ones;
    `--summary` does not look at incomplete markers)."""
    lines = re.findall(r"^\s+output: (.*)$", dry_run_output, flags=re.M)
    return {path for line in lines for path in line.split(", ")}


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    lines = dry_run_output.splitlines()
    if "Nothing to be done" in dry_run_output:
        return {}
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def snapshot(workdir: Path) -> dict[str, int]:
    """mtime (ns) of every result file, logs and benchmarks left out."""
    root = workdir / "results"
    return {
        str(p.relative_to(workdir)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith(("logs/", "benchmarks/"))
    }


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended (rc {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run, made by a run SIGKILLed mid-way and a second run that completes it."""
    work = copy_workflow(tmp_path_factory.mktemp("reruns") / "wf")
    cmd = [SNAKEMAKE, TARGET, "--cores", "2", *CONFIG_ARGS]
    log = open(work / "killed_run.log", "w")
    killed = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # Mid-run: cell A's first stage is done (its selection exists), other jobs are under way.
    wait_for(work / CELL_A / "selected.json", killed, RUN_TIMEOUT)
    os.killpg(killed.pid, signal.SIGKILL)  # Snakemake and the jobs it runs, as when a node dies
    killed.wait()
    log.close()
    at_kill = snapshot(work)
    planned = planned_outputs(snakemake(work, TARGET, "-n", "--cores", "2").stdout)  # missing + incomplete
    began = time.monotonic()
    # the killed Snakemake left its lock behind; --unlock removes it (docs/cluster.md)
    locked = snakemake(work, TARGET, "--cores", "2", check=False)
    snakemake(work, TARGET, "--unlock")
    resumed = snakemake(work, TARGET, "--cores", "2")
    return {"work": work, "at_kill": at_kill, "planned": planned, "locked": locked, "resumed": resumed,
            "resume_seconds": time.monotonic() - began, "after": snapshot(work)}


def test_killed_run_resumes_without_redoing_finished_jobs(finished):
    at_kill, after, planned = finished["at_kill"], finished["after"], finished["planned"]
    assert finished["locked"].returncode != 0 and "--unlock" in finished["locked"].stdout
    assert TARGET not in at_kill, "the run was not interrupted: it had finished before the kill"
    assert f"{CELL_A}/selected.json" in at_kill
    assert TARGET in after and f"{CELL_B}/correlations.parquet" in after
    redone = {path for path, mtime in at_kill.items() if after.get(path) != mtime}
    kept = set(at_kill) - redone
    # only outputs the plan called missing or incomplete were made again, finished ones were kept
    assert redone <= planned, f"finished outputs were re-made: {sorted(redone - planned)}"
    assert {f"{CELL_A}/model.pt", f"{CELL_A}/selected.json", "results/iris/iris/data.pt"} <= kept
    # nothing lost: test_rerun_after_completion_runs_nothing re-runs this state and finds it complete


def test_rerun_after_completion_runs_nothing(finished, tmp_path):
    work = copy_workflow(tmp_path / "wf", finished["work"], with_state=True)
    proc = snakemake(work, TARGET, "--cores", "2")
    assert "Nothing to be done" in proc.stdout
    assert snapshot(work) == snapshot(finished["work"])


def test_deleting_one_loo_chunk_reruns_only_it_and_its_dependents(finished, tmp_path):
    """LOO chunks come after the `select` checkpoint, and Snakemake 9 does not notice a deleted
    file there on its own; forcing the cell's correlations (docs/cluster.md) re-makes it."""
    work = copy_workflow(tmp_path / "wf", finished["work"], with_state=True)
    chunk = f"{CELL_A}/loo/chunk0001.parquet"
    assert (work / f"{CELL_A}/loo/chunk0000.parquet").exists()
    original = pd.read_parquet(work / chunk)
    (work / chunk).unlink()
    before = snapshot(work)
    snakemake(work, TARGET, "--cores", "2", "--forcerun", f"{CELL_A}/correlations.parquet")
    after = snapshot(work)
    changed = {p for p in after if before.get(p) != after[p]}
    assert chunk in changed and f"{CELL_A}/correlations.parquet" in changed and TARGET in changed
    # the chunk, then its cell's correlations, then the study tables; nothing else
    for path in changed - {chunk}:
        assert path.startswith(f"{CELL_A}/") and "/loo/" not in path or path.count("/") == 2, path
    assert not any(p.startswith(CELL_B) for p in changed)
    assert f"{CELL_A}/loo/chunk0000.parquet" not in changed and f"{CELL_A}/model.pt" not in changed
    pd.testing.assert_frame_equal(pd.read_parquet(work / chunk), original)  # same numbers again


@pytest.mark.parametrize("name, first_rule", [("model.pt", "train"), ("test_points.json", "test_points")])
def test_the_command_an_unreadable_file_error_prints_remakes_it(finished, tmp_path, name, first_rule):
    """Deleting a per-cell file whose downstream outputs exist re-makes nothing; the command the
    error for a corrupt file prints (`--forcerun <path>`) re-makes it and what depends on it."""
    from fragility.io import CorruptFileError, load_torch, read_json

    work = copy_workflow(tmp_path / "wf", finished["work"], with_state=True)
    path = f"{CELL_B}/{name}"
    (work / path).write_bytes(b"\x00 not what it should be")
    os.chdir(work)  # the jobs read relative paths
    try:
        with pytest.raises(CorruptFileError) as caught:
            load_torch(path) if name.endswith(".pt") else read_json(path)
    finally:
        os.chdir(REPO)
    command = re.search(r"`snakemake ([^`]*)`", str(caught.value)).group(1).split()
    assert command[-2:] == ["--forcerun", path], str(caught.value)
    (work / path).unlink()
    assert "Nothing to be done" in snakemake(work, TARGET, "-n", "--cores", "1").stdout  # deleting is not enough
    counts = job_counts(snakemake(work, TARGET, "-n", "--cores", "1", "--forcerun", path).stdout)
    assert counts.get(first_rule) == 1 and counts.get("select") == 1 and counts.get("aggregate") == 1, counts
    assert "prepare_data" not in counts and counts.get("train", 0) == (first_rule == "train")


def test_config_change_to_one_architecture_reruns_only_its_cell(finished, tmp_path):
    work = copy_workflow(tmp_path / "wf", finished["work"], with_state=True)
    (work / "configs" / "change.yaml").write_text(
        "studies: {iris: {overrides: {mlp-d2-w5: {train: {lr: 0.04}}}}}\n")
    plan = pending(work, configs=["configs/change.yaml"])
    assert f"{CELL_B}/model.pt" in plan and f"{CELL_B}/influence/exact.parquet" in plan
    assert not any(p.startswith(CELL_A) for p in plan), sorted(plan)
    assert all(p.startswith(CELL_B) or p.count("/") == 2 for p in plan), sorted(plan)
    frame = summary(work, configs=["configs/change.yaml"]).set_index("output_file")
    assert frame.loc[f"{CELL_B}/model.pt", "status"] == "params changed"


def test_run_only_settings_and_another_estimators_options_rerun_only_that_estimator(finished, tmp_path):
    """Logging and checkpoint intervals and how a LOO job's copies share the processor change no
    number: changing them re-runs nothing. A LiSSA option re-runs LiSSA and what reads it, not
    training, the exact estimator, the selection or the re-trainings."""
    work = copy_workflow(tmp_path / "wf", finished["work"], with_state=True)
    (work / "configs" / "run_only.yaml").write_text(
        "studies: {iris: {train: {check_every: 50, checkpoint_every: 100},\n"
        "                 loo: {checkpoint_every: 20, copies_per_pass: 3, repeats: {count: 0, order_seed_offset: 2}}}}\n")
    assert pending(work, configs=["configs/run_only.yaml"]) == set()
    (work / "configs" / "lissa.yaml").write_text(
        "studies: {iris: {influence: {methods: {lissa: {depth: 150}}}}}\n")
    plan = pending(work, configs=["configs/lissa.yaml"])
    assert {f"{CELL_A}/influence/lissa.parquet", f"{CELL_B}/influence/lissa.parquet"} <= plan
    assert not any(word in p for p in plan for word in ("model.pt", "exact", "selected", "/loo/")), sorted(plan)


def test_one_architectures_retrainings_can_be_forced(finished, tmp_path):
    work = copy_workflow(tmp_path / "wf", finished["work"], with_state=True)
    out = snakemake(work, f"{CELL_B}/correlations.parquet", "-n", "--cores", "1",
                    "--forcerun", "loo_chunk", "loo_drift").stdout
    counts = job_counts(out)
    assert counts.get("loo_chunk") == 1 and counts.get("loo_drift") == 1 and counts.get("correlate") == 1
    assert "train" not in counts and "influence" not in counts


def test_until_omit_from_and_one_cell_target(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    until = job_counts(snakemake(work, TARGET, "-n", "--cores", "1", "--until", "train").stdout)
    assert until == {"prepare_data": 1, "train": 2}
    omit = job_counts(snakemake(work, TARGET, "-n", "--cores", "1", "--omit-from", "select").stdout)
    assert {"train", "test_points", "influence", "loo_drift"} <= set(omit)
    assert not {"select", "loo_chunk", "correlate", "aggregate"} & set(omit), omit
    one_cell = job_counts(snakemake(work, f"{CELL_B}/correlations.parquet", "-n", "--cores", "1").stdout)
    assert one_cell["train"] == 1 and one_cell["influence"] == 2 and "aggregate" not in one_cell


@pytest.mark.parametrize(
    "patch, names",
    [
        ("train: {stepz: 10}", ["stepz"]),
        ("train: {lr: fast}", ["configs/bad.yaml: studies.iris.train.lr: 'fast' is not a number"]),
        ("loo: {steps: -5}", ["configs/bad.yaml: studies.iris.loo.steps: -5 is less than the minimum of 1"]),
        ("architectures: [mlp-d1-w5, resnet-9000]", ["studies.iris.architectures", "resnet-9000"]),
    ],
    ids=["unknown-key", "wrong-type", "negative-steps", "unknown-architecture"],
)
def test_bad_config_fails_at_dag_build_naming_the_key(tmp_path, patch, names):
    work = copy_workflow(tmp_path / "wf")
    (work / "configs" / "bad.yaml").write_text(f"studies:\n  iris:\n{textwrap.indent(patch, '    ')}\n")
    proc = snakemake(work, TARGET, "-n", "--cores", "1", configs=["configs/bad.yaml"], check=False, timeout=120)
    output = proc.stdout
    assert proc.returncode != 0 and "Job stats" not in output
    for name in names:
        assert name in output, output[-3000:]


TRAIN_CFG = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 32, "steps": 400, "check_every": 50,
             "checkpoint_every": 100}
KILL_AT_STEP = 250  # between the checkpoints at steps 200 and 300

# The job process: prepares Iris and trains as the `train` rule does, and is SIGKILLed at a fixed
# step (from inside, so the test does not race the training loop).
KILL_SCRIPT = """
import os, signal, sys
import torch
from fragility.engine import training
torch.set_num_threads(1)
from fragility.study.pipeline import prepare_data, train
rows = training.batch_rows
def batch_rows(step, *args):
    if step == int(sys.argv[5]):
        os.kill(os.getpid(), signal.SIGKILL)
    return rows(step, *args)
training.batch_rows = batch_rows
prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0, "standardize": True}, "data", sys.argv[1])
train(sys.argv[1], "mlp-d2-w5", 0.001, 0, eval(sys.argv[4]), "float64", "cpu", sys.argv[2], sys.argv[3],
      checkpoint_path=sys.argv[2] + ".checkpoint")
"""


def test_training_killed_mid_run_resumes_from_its_checkpoint_to_the_same_parameters(tmp_path):
    """SIGKILL the training process between checkpoints; the re-run resumes from the last one
    (SGD with momentum and minibatches, so optimiser state and batch order must resume too) and
    ends at exactly the θ of an uninterrupted run. The killed run leaves no model file behind."""
    from fragility.study.pipeline import load_trained, train

    data, model, metrics = tmp_path / "data.pt", tmp_path / "model.pt", tmp_path / "metrics.json"
    checkpoint = Path(str(model) + ".checkpoint")
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(data), str(model), str(metrics), repr(TRAIN_CFG),
                             str(KILL_AT_STEP)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not model.exists() and not metrics.exists()
    assert torch.load(checkpoint, weights_only=True)["step"] == 200

    messages = []
    train(data, "mlp-d2-w5", 0.001, 0, TRAIN_CFG, "float64", "cpu", model, metrics, checkpoint_path=checkpoint,
          log=messages.append)
    assert f"resuming from checkpoint {checkpoint} at step 200" in messages
    assert not checkpoint.exists()  # removed once the outputs are written
    reference = tmp_path / "reference.pt"
    train(data, "mlp-d2-w5", 0.001, 0, TRAIN_CFG, "float64", "cpu", reference, tmp_path / "reference.json")
    assert torch.equal(load_trained(model)[1], load_trained(reference)[1])
