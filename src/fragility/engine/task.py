"""The Task: everything that depends on what the model predicts, in one object.

The training objective whose Hessian is inverted, the loss the trainer minimises, the loss a
re-training measures and the health flags all call the same Task, so they cannot disagree. With
outputs h = f(x; θ) (logits, or regression outputs) and targets y:

- `per_sample_loss(h, y)` → ℓ_i, shape [n]; the training objective is
  R(θ) = (1/n) Σ_i ℓ_i + (λ/2)‖θ‖²;
- `measurement(h, y)`: what a test point's Δ and Δ̂ are changes of (the test loss by default);
- `output_hessian_product(h, u)` = ∇²_h ℓ · u, the output-space Hessian of the Gauss-Newton
  matrix G = (1/n) Σ J_iᵀ ∇²_h ℓ_i J_i (label-free for both built-in losses);
- `bregman(h, h_ref)`: the Bregman divergence of the loss in output space,
  D(h, h') = ℓ(h) − ℓ(h') − ∇_{h'}ℓ(h')ᵀ(h − h'), label-free for both built-in losses (the PBRF);
- `sample_targets(h, generator)`: targets drawn from the model's predictive distribution (the
  empirical Fisher with sampled labels, as kronfluence fits its factors);
- `evaluate(h, y)` and `training_flags(...)`: did the model train?

Built in: `cross_entropy` (softmax, classification) and `mse` (ℓ = ½‖h − y‖², regression). A
study picks one with `task:`; a Task of your own is named `"path/to/file.py:MyTask"`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Task:
    """The interface (see the module docstring). Subclasses set `name` and `targets_are_labels`."""

    name = "task"
    targets_are_labels = True  # integer class labels (else floating-point targets)
    # per_sample_loss scores every row on its own, so the outputs of k parameter copies may be
    # scored as one batch of k·m rows (the trainer's stacked path for plain MLP chains)
    rows_independent = False

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def measurement(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The quantity whose change on removal is predicted: the per-sample loss by default."""
        return self.per_sample_loss(outputs, targets)

    # output_gradient(h, y, g) = ∂(Σ_i g_i ℓ_i)/∂h by the kernels autograd's backward of
    # per_sample_loss runs (the same bits), for the trainer's graph-free step on plain chains
    # (flat.ChainGradient); None: not written, the trainer uses autograd
    output_gradient = None

    def writes_out_gradient(self) -> bool:
        """Whether `output_gradient` was written for this task's `per_sample_loss` (defined in the
        loss's class or below it): a subclass that overrides the loss but not the gradient gets
        autograd, never the parent's gradient."""
        def owner(name):
            return next(c for c in type(self).__mro__ if name in vars(c))

        return self.output_gradient is not None and issubclass(owner("output_gradient"), owner("per_sample_loss"))

    def output_hessian_product(self, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """∇²_h ℓ(h) u for outputs [m, C] and u [..., m, C] (the outputs are taken as constants)."""
        raise NotImplementedError

    # output_function(h, y) → f per row [m], a scalar function of the outputs through which the
    # loss acts, ℓ = L(f), and output_function_gradient(h, y) → ∂ℓ/∂f per row [m] (TRAK's
    # "model output function" and its Q = −∂ℓ/∂f); None: not written, TRAK refuses the task
    output_function = None
    output_function_gradient = None

    def bregman(self, outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """D(h, h_ref) per row, shape [m]."""
        raise NotImplementedError

    def sample_targets(self, outputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        """{"loss", "losses", "output_spread", and "accuracy" or "explained_variance"}."""
        raise NotImplementedError

    def training_flags(self, train_eval: dict, train_targets: torch.Tensor, n_outputs: int, tol: float = 1e-4,
                       margin: float = 0.02) -> list[str]:
        raise NotImplementedError

    def check_targets(self, targets: torch.Tensor, n_outputs: int, key: str) -> None:
        """ValueError naming `key` when the dataset's targets do not suit this task."""
        if self.targets_are_labels and targets.is_floating_point():
            raise ValueError(f"{key}: task '{self.name}' needs integer class labels, but the dataset's targets are "
                             "floating point (a regression dataset: use task: mse)")
        if not self.targets_are_labels and not targets.is_floating_point():
            raise ValueError(f"{key}: task '{self.name}' needs floating-point targets, but the dataset has integer "
                             "labels (a classification dataset: use task: cross_entropy)")


def _spread(outputs: torch.Tensor) -> float:
    """max over outputs of the standard deviation across rows: ~0 when the model is constant."""
    return float(outputs.std(dim=0).max()) if len(outputs) > 1 else 0.0


class CrossEntropyTask(Task):
    """Softmax cross-entropy on logits h: ℓ = lse(h) − h_y; ∇²_h ℓ = diag(p) − ppᵀ, p = softmax(h);
    D(h, h') = KL(softmax(h') ‖ softmax(h)) = lse(h) − lse(h') − softmax(h')ᵀ(h − h')."""

    name = "cross_entropy"
    targets_are_labels = True
    rows_independent = True

    def per_sample_loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")

    def output_gradient(self, outputs, targets, row_grads):
        """g_i ∂ℓ_i/∂h_i = g_i (softmax(h_i) − e_{y_i}): the backward kernels of nll_loss and log_softmax."""
        log_prob = torch._log_softmax(outputs, 1, False)
        unused_total = torch.zeros((), dtype=outputs.dtype, device=outputs.device)  # read only under reduction 'mean'
        grad = torch.ops.aten.nll_loss_backward(row_grads, log_prob, targets, None, 0, -100, unused_total)
        return torch.ops.aten._log_softmax_backward_data(grad, log_prob, 1, outputs.dtype)

    def output_function(self, outputs, targets):
        """The correct-class margin f = h_y − logsumexp_{j≠y} h_j, so that ℓ = log(1 + e^{−f})."""
        correct = outputs.gather(1, targets[:, None]).squeeze(1)
        others = outputs.scatter(1, targets[:, None], float("-inf"))
        return correct - torch.logsumexp(others, dim=1)

    def output_function_gradient(self, outputs, targets):
        """∂ℓ/∂f = −σ(−f) = −(1 − p_y)."""
        return -torch.sigmoid(-self.output_function(outputs, targets))

    def output_hessian_product(self, outputs, u):
        prob = torch.softmax(outputs.detach(), dim=-1)
        return prob * u - prob * (prob * u).sum(-1, keepdim=True)

    def bregman(self, outputs, reference):
        ref_prob = torch.softmax(reference, dim=-1)
        return (torch.logsumexp(outputs, -1) - torch.logsumexp(reference, -1)
                - (ref_prob * (outputs - reference)).sum(-1))

    def sample_targets(self, outputs, generator=None):
        prob = torch.softmax(outputs.detach(), dim=-1)
        return torch.multinomial(prob, 1, generator=generator).squeeze(-1)

    def evaluate(self, outputs, targets):
        losses = self.per_sample_loss(outputs, targets)
        return {"loss": float(losses.mean()), "accuracy": float((outputs.argmax(1) == targets).double().mean()),
                "losses": losses, "output_spread": _spread(outputs)}

    def training_flags(self, train_eval, train_targets, n_outputs, tol=1e-4, margin=0.02):
        """`constant_outputs`: the logits barely vary across inputs (max over classes of their std
        < `tol`); `chance_accuracy`: no better than always predicting the most frequent class
        (+ `margin`)."""
        flags = []
        if train_eval["output_spread"] < tol:
            flags.append("constant_outputs")
        majority = float(torch.bincount(train_targets, minlength=n_outputs).max()) / len(train_targets)
        if train_eval["accuracy"] <= majority + margin:
            flags.append("chance_accuracy")
        return flags


class MeanSquaredErrorTask(Task):
    """Regression: ℓ = ½‖h − y‖² (y of shape [n] is read as [n, 1]); ∇²_h ℓ = I;
    D(h, h') = ½‖h − h'‖²; sampled targets y ~ N(h, I)."""

    name = "mse"
    targets_are_labels = False
    rows_independent = True

    @staticmethod
    def _as_outputs(outputs, targets):
        return targets.reshape(outputs.shape).to(outputs.dtype)

    def per_sample_loss(self, outputs, targets):
        residual = outputs - self._as_outputs(outputs, targets)
        return 0.5 * residual.pow(2).reshape(len(outputs), -1).sum(-1)

    def output_gradient(self, outputs, targets, row_grads):
        """g_i ∂ℓ_i/∂h_i = g_i (h_i − y_i), as autograd's backward of per_sample_loss computes it."""
        residual = outputs - self._as_outputs(outputs, targets)
        per_output = row_grads.unsqueeze(-1).expand(len(outputs), residual[0].numel()).reshape(residual.shape)
        return (per_output * 0.5) * (2.0 * residual.pow(1.0))

    def output_function(self, outputs, targets):
        """The output itself, f = h, for a single output (ℓ = ½(f − y)²); ValueError for several."""
        if outputs.dim() != 2 or outputs.shape[1] != 1:
            raise ValueError(f"task 'mse': the output function (TRAK) is defined for a single output, and the model "
                             f"has {outputs.shape[1:].numel()}")
        return outputs[:, 0]

    def output_function_gradient(self, outputs, targets):
        """∂ℓ/∂f = f − y."""
        return self.output_function(outputs, targets) - self._as_outputs(outputs, targets).reshape(-1)

    def output_hessian_product(self, outputs, u):
        return u

    def bregman(self, outputs, reference):
        return 0.5 * (outputs - reference).pow(2).reshape(len(outputs), -1).sum(-1)

    def sample_targets(self, outputs, generator=None):
        noise = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device="cpu").to(outputs.device)
        return outputs.detach() + noise

    def evaluate(self, outputs, targets):
        losses = self.per_sample_loss(outputs, targets)
        y = self._as_outputs(outputs, targets)
        total = (y - y.mean(0)).pow(2).sum()
        explained = 1.0 - float((outputs - y).pow(2).sum() / total) if total > 0 else float("nan")
        return {"loss": float(losses.mean()), "explained_variance": explained, "losses": losses,
                "output_spread": _spread(outputs)}

    def training_flags(self, train_eval, train_targets, n_outputs, tol=1e-4, margin=0.02):
        """`constant_outputs`: predictions barely vary across inputs (std < `tol`);
        `no_better_than_mean`: explained variance R² ≤ `margin`, i.e. no better than predicting
        the mean of the training targets."""
        flags = []
        if train_eval["output_spread"] < tol:
            flags.append("constant_outputs")
        if not train_eval["explained_variance"] > margin:
            flags.append("no_better_than_mean")
        return flags


TASKS = {"cross_entropy": CrossEntropyTask, "mse": MeanSquaredErrorTask}


def make_task(name: str = "cross_entropy") -> Task:
    """A built-in Task by name, or a Task class of your own by import path ("file.py:MyTask")."""
    if name in TASKS:
        return TASKS[name]()
    if ":" in str(name):
        from .. import plugins

        task = plugins.call(name, "task")
        if not isinstance(task, Task):
            raise plugins.PluginError(f"task: '{name}' made a {type(task).__name__}, not a fragility.engine.task.Task")
        return task
    raise ValueError(f"task: unknown task '{name}'; known: {sorted(TASKS)}, or 'path/to/file.py:MyTask'")
