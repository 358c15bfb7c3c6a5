"""What runs where: one tiny model per kind of layer (Linear, Conv2d, BatchNorm, Dropout, Embedding,
EmbeddingBag, attention), trained briefly on tiny synthetic data, then every built-in estimator
(through `pipeline.compute_influence`) and every re-training truth (LOO chunk, PBRF, groups).
Each cell's outcome is compared with `EXPECTED`; docs/what_runs_where.md is rendered from the
same tables (`render`) and a test checks it is up to date. Rewrite it with

    PYTHONPATH=src python tests/test_what_runs_where.py

An outcome is `ok` (the estimator's scores are finite with status ok for every test point / the
truth's table has finite test losses), or the estimator's status (`unsupported: ...`: NaN
scores, the job goes on), or `error: <exception type>` (the job fails)."""

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from fragility.data.split import Split
from fragility.io import read_json
from fragility.study import pipeline
from fragility.truths.registry import get

QUIET = dict(log=lambda *a: None)
VOCAB, LENGTH, PAD = 10, 6, 0
DOC = Path(__file__).resolve().parents[1] / "docs" / "what_runs_where.md"

# the model of each row: (factory in FACTORIES, data set, what it is)
ROWS = {
    "Linear": ("linear", "features", "`Linear → Tanh → Linear` on 4 features"),
    "Conv2d": ("conv", "images", "`Conv2d(1, 2, 3) → Tanh → Flatten → Linear` on 1×6×6 images"),
    "BatchNorm": ("batchnorm", "features", "`Linear → BatchNorm1d → Tanh → Linear`"),
    "Dropout": ("dropout", "features", "`Linear → Tanh → Dropout(0.5) → Linear`"),
    "Embedding": ("embedding", "tokens", "`nn.Embedding` on integer token ids, mean over positions, `Linear`"),
    "EmbeddingBag": ("embedding_bag", "tokens", "`nn.EmbeddingBag(mode=\"mean\")` on token ids, `Linear`"),
    "attention": ("attention", "tokens",
                  "`nn.Embedding(padding_idx=0)` + learned positions, one `nn.TransformerEncoderLayer` "
                  "(d_model 4, 2 heads, dropout 0, `enable_nested_tensor=False`) with the padding mask "
                  "built inside the model, masked mean, `Linear`"),
}

# estimator → its options here (small budgets: the models have a few dozen parameters)
ESTIMATORS = {
    "exact": {}, "cg": {"hessian": "gauss_newton"},
    "lissa": {"hessian": "gauss_newton", "depth": 50, "power_iterations": 10}, "arnoldi": {"iterations": 20, "rank": 10},
    "kfac": {}, "ekfac": {}, "identity": {}, "grad_cosine": {}, "representer": {}, "tracin": {},
    "trak": {"projection_dim": 16},
}
TRUTHS = ("loo", "pbrf", "groups")
COLUMNS = ("train", *ESTIMATORS, *TRUTHS)

OK = "ok"
NO_DOUBLE_BACKWARD = "unsupported: derivative of _embedding_bag_backward"
# the expected outcome of every cell; a row's `kfac covers` / `kfac uncovered`: the layer kinds
# K-FAC's diagnostics list as covered by a Kronecker factor / left to the diagonal fallback
EXPECTED = {
    "Linear": {**dict.fromkeys(COLUMNS, OK)},
    "Conv2d": {**dict.fromkeys(COLUMNS, OK)},
    "BatchNorm": {**dict.fromkeys(COLUMNS, OK)},
    "Dropout": {**dict.fromkeys(COLUMNS, OK)},
    "Embedding": {**dict.fromkeys(COLUMNS, OK)},
    "EmbeddingBag": {**dict.fromkeys(COLUMNS, OK), **dict.fromkeys(("exact", "cg", "lissa", "arnoldi"),
                                                                 NO_DOUBLE_BACKWARD)},
    "attention": {**dict.fromkeys(COLUMNS, OK)},
}
KFAC_LAYERS = {  # row → (covered kinds, uncovered kinds), sorted and without repeats
    "Linear": (["linear"], []),
    "Conv2d": (["conv2d", "linear"], []),
    "BatchNorm": (["linear"], ["BatchNorm1d"]),
    "Dropout": (["linear"], []),
    "Embedding": (["linear"], ["Embedding"]),
    "EmbeddingBag": (["linear"], ["EmbeddingBag"]),
    # the position parameters (the model's own), the attention's input projection (a parameter of
    # MultiheadAttention) and its output projection (a Linear it applies without calling it)
    "attention": (["linear"], ["Attention", "Embedding", "LayerNorm", "MultiheadAttention",
                               "NonDynamicallyQuantizableLinear"]),
}

FACTORIES = textwrap.dedent('''
    import torch
    from torch import nn


    def linear(input_shape, n_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 5), nn.Tanh(), nn.Linear(5, n_classes))


    def conv(input_shape, n_classes):
        side = input_shape[-1] - 2
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * side * side, n_classes))


    def batchnorm(input_shape, n_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, n_classes))


    def dropout(input_shape, n_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, n_classes))


    class Embedding(nn.Module):
        def __init__(self, n_classes, vocab=10, dim=3):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.out = nn.Linear(dim, n_classes)

        def forward(self, tokens):
            return self.out(self.embed(tokens).mean(1))


    def embedding(input_shape, n_classes):
        return Embedding(n_classes)


    class Bag(nn.Module):
        def __init__(self, n_classes, vocab=10, dim=3):
            super().__init__()
            self.embed = nn.EmbeddingBag(vocab, dim, mode="mean")
            self.out = nn.Linear(dim, n_classes)

        def forward(self, tokens):
            return self.out(self.embed(tokens))


    def embedding_bag(input_shape, n_classes):
        return Bag(n_classes)


    class Attention(nn.Module):
        """Token ids (0: padding) → embeddings + positions → one encoder layer that ignores the
        padding → mean over the real tokens → class scores."""

        def __init__(self, n_classes, length, vocab=10, dim=4, heads=2, pad=0):
            super().__init__()
            self.pad = pad
            self.embed = nn.Embedding(vocab, dim, padding_idx=pad)
            self.position = nn.Parameter(0.1 * torch.randn(length, dim))
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=8, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.out = nn.Linear(dim, n_classes)

        def forward(self, tokens):
            padding = tokens == self.pad
            h = self.encoder(self.embed(tokens) + self.position, src_key_padding_mask=padding)
            keep = (~padding).unsqueeze(-1).to(h.dtype)
            return self.out((h * keep).sum(1) / keep.sum(1).clamp(min=1))


    def attention(input_shape, n_classes):
        return Attention(n_classes, input_shape[0])
''')

TRAIN = {"optimizer": "sgd", "lr": 0.3, "steps": 30, "batch_size": 8, "check_every": 1000, "keep_checkpoints": 3}
LOO = {"steps": 10}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The factories and three tiny data sets (24 training rows, 8 test rows, 2 classes)."""
    root = tmp_path_factory.mktemp("whatruns")
    (root / "mine.py").write_text(FACTORIES)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(32, 4, generator=gen)
    labels = (features[:, 0] + features[:, 1] > 0).long()
    images = torch.randn(32, 1, 6, 6, generator=gen)
    image_labels = (images[:, 0, :3].mean((1, 2)) > images[:, 0, 3:].mean((1, 2))).long()
    tokens = torch.randint(1, VOCAB, (32, LENGTH), generator=gen)
    lengths = torch.randint(2, LENGTH + 1, (32,), generator=gen)
    tokens[torch.arange(LENGTH)[None] >= lengths[:, None]] = PAD  # trailing padding, variable lengths
    token_labels = ((tokens > 0) & (tokens < VOCAB // 2)).sum(1).gt(lengths // 2).long()
    for name, x, y in (("features", features, labels), ("images", images, image_labels),
                       ("tokens", tokens, token_labels)):
        Split(x[:24], y[:24], x[24:], y[24:], n_classes=2).save(root / f"{name}.pt")
    return root


def outcome_of(err: BaseException) -> str:
    return f"error: {type(err).__name__}"


def estimator_outcome(scores: pd.DataFrame) -> str:
    statuses = sorted(set(scores.status))
    if statuses == ["ok"]:
        return OK if scores.predicted_loss_change.notna().all() else "ok with NaN scores"
    return "; ".join(statuses)


def run_row(root: Path, row: str) -> tuple[dict, dict, dict]:
    """(outcome of every column, K-FAC's (covered, uncovered) layer kinds, error messages)."""
    factory, data_name, _ = ROWS[row]
    data = str(root / f"{data_name}.pt")
    models_cfg = {row: {"factory": f"{root}/mine.py:{factory}"}}
    paths = {name: str(root / f"{row}-{name}") for name in ("model.pt", "metrics.json", "tp.json")}
    outcomes, errors, kfac = {}, {}, None
    try:
        pipeline.train(data, row, 0.01, 0, TRAIN, "float64", "cpu", paths["model.pt"], paths["metrics.json"],
                       models_cfg=models_cfg, **QUIET)
        pipeline.pick_test_points(paths["model.pt"], data, ["max", "median"], paths["tp.json"], "cpu")
        outcomes["train"] = OK
    except Exception as err:  # noqa: BLE001 (recorded, compared with the table)
        outcomes["train"], errors["train"] = outcome_of(err), repr(err)
        return {**outcomes, **dict.fromkeys(COLUMNS[1:], "not trained")}, kfac, errors
    for method, options in ESTIMATORS.items():
        table, diag = str(root / f"{row}-{method}.parquet"), str(root / f"{row}-{method}.json")
        try:
            pipeline.compute_influence(paths["model.pt"], data, paths["tp.json"], method, options, 0.01, table, diag,
                                       device_name="cpu", **QUIET)
            outcomes[method] = estimator_outcome(pd.read_parquet(table))
            if method == "kfac":
                diagnostics = read_json(diag)
                kfac = (sorted({entry["kind"] for entry in diagnostics["covered_layers"]}),
                        sorted({entry["kind"] for entry in diagnostics["uncovered_layers"]}))
        except Exception as err:  # noqa: BLE001
            outcomes[method], errors[method] = outcome_of(err), repr(err)
    cell = {"model": paths["model.pt"], "data": data, "test_points": paths["tp.json"]}
    runs = {
        "loo": lambda out: get("loo").retrain_chunk(cell, [(-1, []), (0, [0])], LOO, LOO, TRAIN, out, device_name="cpu",
                                                    **QUIET),
        "pbrf": lambda out: get("pbrf").retrain_chunk(cell, [(-1, []), (3, [3])], get("pbrf").defaults, LOO, TRAIN, out,
                                                      damping=0.01, device_name="cpu", **QUIET),
        "groups": lambda out: get("groups").retrain_chunk(cell, [(0, []), (1, [4, 5])], get("groups").defaults, LOO,
                                                          TRAIN, out, device_name="cpu", **QUIET),
    }
    for truth, run in runs.items():
        out = str(root / f"{row}-{truth}.parquet")
        try:
            run(out)
            outcomes[truth] = OK if pd.read_parquet(out).test_loss.notna().all() else "NaN test losses"
        except Exception as err:  # noqa: BLE001
            outcomes[truth], errors[truth] = outcome_of(err), repr(err)
    return outcomes, kfac, errors


@pytest.mark.parametrize("row", list(ROWS))
def test_what_runs_on_each_kind_of_layer(root, row):
    outcomes, kfac, errors = run_row(root, row)
    wrong = {c: (outcomes[c], EXPECTED[row][c]) for c in COLUMNS if outcomes[c] != EXPECTED[row][c]}
    assert not wrong, f"{row}: (observed, expected) {wrong}; errors {errors}"
    assert kfac == KFAC_LAYERS[row], kfac


# --------------------------------------------------------------------------- attention under torch.func
# Each check on the attention model's loss as a function of θ, in train and eval mode, with
# PyTorch's defaults and inside `engine.flat.differentiable_attention()` (the math backend of
# scaled_dot_product_attention, no fused fast path), which compute_influence and every
# re-training truth enter: `ok`, or the derivative PyTorch reports missing (on CPU).
ATTENTION_CHECKS = ("functional_call", "vmap over rows", "jvp", "double backward", "jvp of vmap(grad)")
FLASH_FORWARD = "unsupported: forward-mode derivative of _scaled_dot_product_flash_attention_for_cpu"
FLASH_DOUBLE = "unsupported: derivative of _scaled_dot_product_flash_attention_for_cpu_backward"
ATTENTION_EXPECTED = {
    ("train", "default"): {**dict.fromkeys(ATTENTION_CHECKS, OK), "jvp": FLASH_FORWARD,
                           "double backward": FLASH_DOUBLE, "jvp of vmap(grad)": FLASH_FORWARD},
    ("eval", "default"): {**dict.fromkeys(ATTENTION_CHECKS, OK),
                          "jvp": "unsupported: forward-mode derivative of _transformer_encoder_layer_fwd",
                          "double backward": FLASH_DOUBLE, "jvp of vmap(grad)": FLASH_FORWARD},
    ("train", "differentiable_attention()"): dict.fromkeys(ATTENTION_CHECKS, OK),
    ("eval", "differentiable_attention()"): dict.fromkeys(ATTENTION_CHECKS, OK),
}


def attention_checks(root: Path, mode: str, backend: str) -> dict:
    import contextlib
    import importlib.util

    from torch.func import functional_call, grad, jvp, vmap

    from fragility.engine.flat import differentiable_attention
    from fragility.engine.ihvp import unsupported_status

    spec = importlib.util.spec_from_file_location("whatruns_factories", root / "mine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.attention((LENGTH,), 2).double()
    model.train(mode == "train")
    split = Split.load(root / "tokens.pt")
    x, y = split.x_train[:5], split.y_train[:5]
    params = {k: v.detach() for k, v in model.named_parameters()}
    direction = {k: torch.randn_like(v) for k, v in params.items()}

    def loss(p, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi,)), yi)

    checks = {
        "functional_call": lambda: loss(params, x, y),
        "vmap over rows": lambda: vmap(lambda xi, yi: loss(params, xi[None], yi[None]))(x, y),
        "jvp": lambda: jvp(lambda p: loss(p, x, y), (params,), (direction,)),
        "double backward": lambda: _double_backward(model, params, direction, x, y),
        "jvp of vmap(grad)": lambda: jvp(lambda p: vmap(grad(loss), in_dims=(None, 0, 0))(p, x[:, None], y[:, None]),
                                         (params,), (direction,)),
    }
    out = {}
    for name, check in checks.items():
        try:
            with differentiable_attention() if backend != "default" else contextlib.nullcontext():
                check()
            out[name] = OK
        except Exception as err:  # noqa: BLE001
            out[name] = unsupported_status(err) or f"{outcome_of(err)} ({str(err).splitlines()[0][:100]})"
    return out


def _double_backward(model, params, direction, x, y):
    """∇(∇ℓ · v) by reverse over reverse, as the Hessian-vector products of the engine."""
    from torch.func import functional_call

    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)
    g = torch.autograd.grad(loss, list(p.values()), create_graph=True)
    dot = sum((gi * direction[k]).sum() for gi, k in zip(g, p))
    return torch.autograd.grad(dot, list(p.values()))


@pytest.mark.parametrize("mode,backend", list(ATTENTION_EXPECTED))
def test_attention_under_torch_func(root, mode, backend):
    assert attention_checks(root, mode, backend) == ATTENTION_EXPECTED[mode, backend]
    assert torch.backends.mha.get_fastpath_enabled()  # differentiable_attention() restores it


def test_a_fused_kernel_without_double_backward_is_refused_not_a_crash(root):
    """Outside differentiable_attention() the exact solver meets the fused attention kernel's
    missing double backward (a RuntimeError "derivative for aten::<op> is not implemented"): its
    solves are NaN with the status `unsupported: ...`, not an exception."""
    import importlib.util

    from fragility.engine.flat import FlatModel
    from fragility.engine.objective import Objective
    from fragility.engine.solvers import make_solver

    spec = importlib.util.spec_from_file_location("whatruns_factories", root / "mine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = FlatModel(module.attention((LENGTH,), 2).double().train())
    split = Split.load(root / "tokens.pt")
    theta = net.flatten()
    solver = make_solver("exact").fit(Objective(net, split.x_train, split.y_train, 0.01), theta)
    result = solver.solve(torch.ones(2, theta.numel(), dtype=theta.dtype), 0.01)
    assert result.status == [FLASH_DOUBLE] * 2 and torch.isnan(result.solutions).all()


# --------------------------------------------------------------------------- the document
def cell_text(outcome: str, refused: str = "refused: no ") -> str:
    if outcome == OK:
        return "✓"
    if outcome.startswith("unsupported: "):
        return refused + outcome[len("unsupported: "):]
    return outcome


def render() -> str:
    head = "| layer | " + " | ".join(COLUMNS) + " | K-FAC: factors / diagonal |"
    lines = [
        "# What runs where",
        "",
        "Which estimators and ground truths run on a network with each kind of layer. Every cell is",
        "checked by `tests/test_what_runs_where.py`, which builds one tiny float64 model per row, trains it",
        "(30 SGD steps on 24 synthetic rows) and runs each estimator through `pipeline.compute_influence`",
        "and each re-training truth (a LOO chunk, PBRF, groups) through `truths.registry.get(name)`;",
        "this page is written from the test's tables (`PYTHONPATH=src python tests/test_what_runs_where.py`)",
        "and a test fails when it is out of date.",
        "",
        "✓: runs (finite scores with status `ok`; a truth's table with finite test losses).",
        "refused: no derivative of *op*: PyTorch implements no derivative of *op* that the estimator needs;",
        "its job exits 0 with NaN scores and the status `unsupported: derivative of <op>`, and the",
        "correlation tables flag it (README, \"Estimators: K-FAC, EK-FAC and no curvature at all\").",
        "Influence and the Hessian are computed in eval mode (dropout off, BatchNorm on running",
        "statistics); re-training runs in train mode, with dropout masks shared by the copies of a chunk.",
        "",
        head,
        "|" + "---|" * (len(COLUMNS) + 2),
    ]
    for row in ROWS:
        covered, uncovered = KFAC_LAYERS[row]
        lines.append(f"| {row} | " + " | ".join(cell_text(EXPECTED[row][c]) for c in COLUMNS)
                     + f" | {', '.join(covered) or '–'} / {', '.join(uncovered) or '–'} |")
    options = ", ".join(f"{name} `{options}`" for name, options in ESTIMATORS.items() if options)
    lines += ["", f"Estimator options here: {options} (exact and Arnoldi on the full Hessian; CG and LiSSA",
              "on the Gauss-Newton matrix, so that a cell shows what the layer allows, not the indefinite",
              "curvature of a briefly trained net: with the full Hessian CG stops at `negative_curvature`).",
              "", "The models:", ""]
    lines += [f"- **{row}**: {what}" for row, (_, _, what) in ROWS.items()]
    lines += [
        "",
        "Every model ends in an `nn.Linear`, which the representer estimator requires; TracIn uses the",
        "checkpoints that `train.keep_checkpoints` keeps (3 here). The last column lists the layer kinds",
        "K-FAC/EK-FAC cover with Kronecker factors and those left to the exact diagonal of the",
        "Gauss-Newton matrix (`uncovered: diagonal`), as the diagnostics list them.",
        "",
        "The attention model's output projection is an `nn.Linear` that `nn.MultiheadAttention` applies",
        "without calling it (`F.multi_head_attention_forward` reads its weight): K-FAC sees no forward",
        "of it and leaves it, with the input projection, the layer norms and the positions, to the",
        "diagonal fallback.",
        "",
        "## Attention under `torch.func`",
        "",
        "The attention model's loss as a function of its parameters (`functional_call`), per row",
        "(`vmap`), forward mode (`jvp`), reverse over reverse (Hessian-vector products), and forward",
        "over per-row reverse (per-sample gradients along a direction), in each mode, on CPU, with",
        "PyTorch's defaults and inside `engine.flat.differentiable_attention()` (the math backend of",
        "`scaled_dot_product_attention`, the fused fast path of `nn.TransformerEncoderLayer` off).",
        "With the defaults the fused kernels lack forward-mode and second derivatives (✗: the",
        "derivative PyTorch reports missing); `compute_influence` and every re-training truth run",
        "inside `differentiable_attention()`, which is why the attention row above runs everything.",
        "Training (θ* and the drift control's first-order steps) keeps PyTorch's defaults.",
        "",
        "| mode | attention | " + " | ".join(ATTENTION_CHECKS) + " |",
        "|" + "---|" * (len(ATTENTION_CHECKS) + 2),
    ]
    lines += [f"| {mode} | {backend} | " + " | ".join(cell_text(ATTENTION_EXPECTED[mode, backend][c], "✗ no ")
                                                       for c in ATTENTION_CHECKS) + " |"
              for mode, backend in ATTENTION_EXPECTED]
    return "\n".join(lines) + "\n"


def test_the_document_is_written_from_these_tables():
    assert DOC.read_text() == render(), f"{DOC} is out of date: PYTHONPATH=src python tests/test_what_runs_where.py"


if __name__ == "__main__":
    DOC.write_text(render())
    sys.exit(0)
