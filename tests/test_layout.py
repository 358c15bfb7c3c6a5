"""The library's structure: no import cycles, one owner of the loss (the Task), and a DAG that
builds without torch."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fragility"


def _module_graph() -> dict[str, set[str]]:
    """Module → the library modules it imports (at top level or inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    edges = {m: set() for m in modules}
    for module, path in modules.items():
        base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    target = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[module] |= {n for n in names if n in modules and n != module}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    edges = _module_graph()
    assert len(edges) > 20
    assert _cycles(edges) == []
    # the check sees a cycle when there is one
    assert _cycles({**edges, "fragility.engine.task": edges["fragility.engine.task"] | {"fragility.engine.flat"}})


LOSS_FUNCTIONS = {"cross_entropy", "mse_loss", "nll_loss", "log_softmax", "softmax", "binary_cross_entropy",
                  "binary_cross_entropy_with_logits", "kl_div"}


def _calls_a_loss(source: str) -> bool:
    """Does the code (not its docstrings or comments) call one of LOSS_FUNCTIONS?"""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in LOSS_FUNCTIONS:
                return True
    return False


def test_only_the_task_names_a_loss_function():
    named = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if _calls_a_loss(p.read_text()))
    assert named == ["engine/task.py"]
    assert _calls_a_loss("import torch\nloss = torch.nn.functional.cross_entropy(h, y)\n")
    assert not _calls_a_loss('"""KL(softmax(h*) ‖ softmax(h))"""\n')


def test_no_import_error_is_swallowed():
    """A broken import must surface, not turn into 'unknown architecture'."""
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "except ImportError" in p.read_text()]
    assert offenders == []


def test_the_dag_builds_without_torch(tmp_path):
    """`snakemake -n` over every shipped study kind and the plug-in example, with torch made
    unimportable: building the DAG imports neither torch nor a user's model code."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch must not be imported to build the DAG')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    snakemake = str(Path(sys.executable).parent / "snakemake")
    run = subprocess.run([snakemake, "-n", "--quiet", "all", "--configfile", "configs/quick.yaml", "examples/audit.yaml"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "torch must not be imported" not in run.stdout + run.stderr


def test_a_failing_in_process_job_writes_its_traceback_to_its_log(tmp_path):
    import pytest

    from fragility.runtime import job_log

    log = tmp_path / "job.log"
    with pytest.raises(ZeroDivisionError):
        with job_log(str(log)) as logger:
            logger("started")
            1 / 0
    text = log.read_text()
    assert "started" in text and "failed: ZeroDivisionError" in text and "Traceback" in text
