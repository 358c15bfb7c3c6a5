"""A network as a function of one flat parameter vector θ ∈ R^p (`torch.func.functional_call`),
with the Task that turns its outputs into losses.

A model that is a plain chain of Flatten, Linear and ReLU layers (an `nn.Sequential`, or a module
whose `as_sequential()` returns the chain its forward runs, as the MLPs do) is evaluated, while no
forward hook is registered on it, by calling the same functional operations directly: the same numbers to the bit, without functional_call's
per-call swapping of every parameter into the module, which dominates a step of a tiny net."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.modules import module as torch_module  # the global forward hooks

from .task import CrossEntropyTask, Task


@contextlib.contextmanager
def differentiable_attention():
    """Attention that torch.func can differentiate to any order: scaled_dot_product_attention on
    its math backend (matmul, softmax), and without the fused inference fast path of
    nn.TransformerEncoderLayer / nn.MultiheadAttention (taken in eval mode when no input requires
    grad, as under `jvp`). PyTorch's fused kernels (flash attention on CPU,
    `_transformer_encoder_layer_fwd`) have neither a double backward nor a forward-mode derivative.
    The same function, to rounding; no effect on a model without attention. Also a decorator."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)


class FlatModel:
    """Wraps `model` so that its outputs ("logits") and the `task`'s losses are functions of a flat
    vector θ. The task defaults to softmax cross-entropy."""

    def __init__(self, model: nn.Module, task: Task | None = None):
        self.model = model
        self.task = task if task is not None else CrossEntropyTask()
        params = list(model.named_parameters())
        self.names = [n for n, _ in params]
        self.shapes = [p.shape for _, p in params]
        self.sizes = [p.numel() for _, p in params]
        self.buffers = {n: b for n, b in model.named_buffers()}
        self.chain = plain_chain(model, set(self.names))
        shapes = dict(zip(self.names, self.shapes))
        self._chain_shapes = [shapes[names[0]] if kind == "linear" else None for kind, names in self.chain or []]
        self._modules = list(model.modules())

    @property
    def num_parameters(self) -> int:
        return sum(self.sizes)

    def flatten(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.sizes), self.shapes)}

    def load_into_model(self, theta: torch.Tensor) -> nn.Module:
        with torch.no_grad():
            for p, t in zip(self.model.parameters(), theta.split(self.sizes)):
                p.copy_(t.view_as(p))
        return self.model

    def hooked(self) -> bool:
        """Whether a forward hook is registered on the model now (K-FAC records activations with
        hooks): a hooked model is evaluated by functional_call, which runs them."""
        return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                    or any(m._forward_hooks or m._forward_pre_hooks for m in self._modules))

    def logits(self, theta: torch.Tensor, x: torch.Tensor, buffers: dict | None = None) -> torch.Tensor:
        if self.chain is not None and not self.hooked():
            return run_chain(self.chain_layers(theta), x)[0]
        return functional_call(self.model, (self.unflatten(theta), self.buffers if buffers is None else buffers), (x,))

    def stacked_logits(self, thetas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs [k, m, ...] of the k copies `thetas` [k, p] on the shared inputs x [m, ...], for a
        plain chain: broadcast matrix products on the stacked weights (torch.matmul, then the bias),
        the operations `vmap(logits)` runs, with the same bits (tested) and without vmap's
        per-operation overhead."""
        h, on_copies = run_chain(self.chain_layers(thetas), x, copies=len(thetas))
        return h if on_copies else h.unsqueeze(0).expand(len(thetas), *h.shape)

    def chain_layers(self, theta: torch.Tensor) -> list[tuple]:
        """The plain chain's layers [(kind, arguments, weight, bias)] with views of their weights into
        θ: for one copy θ [p] the operands of F.linear (weight [out, in], bias [out]); for stacked
        copies Θ [k, p] those of the batched products (weight [k, in, out], bias [k, 1, out])."""
        stacked = theta.dim() == 2
        params = dict(zip(self.names, theta.split(self.sizes, dim=-1)))
        layers = []
        for (kind, names), shape in zip(self.chain, self._chain_shapes):
            weight = bias = None
            if kind == "linear":
                weight = (params[names[0]].reshape(len(theta), *shape).transpose(1, 2) if stacked
                          else params[names[0]].view(shape))
                if len(names) > 1:
                    bias = params[names[1]].unsqueeze(1) if stacked else params[names[1]]
            layers.append((kind, names, weight, bias))
        return layers

    def per_sample_losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ℓ(z_i, θ) for every row, the task's loss of the outputs, shape [n]."""
        return self.task.per_sample_loss(self.logits(theta, x), y)

    def measurements(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's test measurement for every row (the loss unless the task says otherwise), [n]."""
        return self.task.measurement(self.logits(theta, x), y)


def run_chain(layers: list[tuple], x: torch.Tensor, copies: int | None = None, saved: list | None = None):
    """Forward through `FlatModel.chain_layers`: one copy (`copies` None: F.linear, F.relu) or
    `copies` stacked ones (torch.matmul on the stacked weights, then the bias; the inputs are shared
    until the first layer with weights, after which a copy's dimension d is dimension d + 1).
    Returns (outputs, whether they are per copy); `saved` collects each layer's (input, output)."""
    h, on_copies = x, False
    for kind, names, weight, bias in layers:
        before = h
        if kind == "linear":
            if copies:  # torch.matmul's own bmm for shared 2-D or stacked 3-D inputs, without its dispatch
                h = (torch.bmm(h.expand(copies, *h.shape), weight) if h.dim() == 2 else
                     torch.bmm(h, weight) if h.dim() == 3 else torch.matmul(h, weight))
                h = h + bias if bias is not None else h
            elif h.dim() == 2:  # what F.linear calls for 2-D inputs, without its dispatch
                h = torch.addmm(bias, h, weight.t()) if bias is not None else h.mm(weight.t())
            else:
                h = F.linear(h, weight, bias)
            on_copies = True
        elif kind == "relu":
            h = F.relu(h)
        else:
            start, end = names
            shift = int(on_copies and bool(copies))
            h = h.flatten(start + shift if start >= 0 else start, end + shift if end >= 0 else end)
        if saved is not None:
            saved.append((before, h))
    return h, on_copies


def plain_chain(model: nn.Module, parameter_names: set[str]):
    """[(kind, arguments)] of a model that is a chain of exactly nn.Flatten, nn.Linear and nn.ReLU
    layers without hooks or buffers (kind "flatten": (start_dim, end_dim); "linear": the names of its
    weight and bias in θ; "relu": ()), else None: such a model's forward is these functional calls."""
    if isinstance(model, nn.Sequential):
        chain, prefix = model, ""
    else:
        as_sequential = getattr(model, "as_sequential", None)
        if not callable(as_sequential):
            return None
        chain = as_sequential()
        prefix = next((name + "." for name, m in model.named_modules() if m is chain), None)
        if prefix is None or prefix == ".":
            return None
    if list(model.buffers()) or model._forward_hooks or model._forward_pre_hooks:
        return None
    steps, seen = [], set()
    for index, layer in enumerate(chain):
        if layer._forward_hooks or layer._forward_pre_hooks:
            return None
        if type(layer) is nn.Linear:
            names = [f"{prefix}{index}.weight"] + ([f"{prefix}{index}.bias"] if layer.bias is not None else [])
            steps.append(("linear", names))
            seen.update(names)
        elif type(layer) is nn.ReLU:
            steps.append(("relu", ()))
        elif type(layer) is nn.Flatten:
            steps.append(("flatten", (layer.start_dim, layer.end_dim)))
        else:
            return None
    return steps if seen == parameter_names else None


class ChainGradient:
    """∇ of Σ_c R_c(θ_c) for k copies Θ [k, p] of a plain chain (FlatModel.chain), [k, p], where

        R_c(θ) = Σ_i w_ci ℓ(f(x_i; θ), y_i) / m_c + (λ/2)‖θ‖²,  m_c = max(Σ_i w_ci, 1) (kept) or n (all),

    the trainer's objective. The backward pass is written out: the kernels autograd's backward runs
    for that objective (k = 1: `FlatModel.logits`' addmm; k > 1: the bmm inside `stacked_logits`'
    matmul), on the same operands in the same order, so the same bits (tested against autograd),
    without recording a graph per step. The forward is `run_chain`, as in `logits`. The task supplies ∂ℓ/∂h (`Task.output_gradient`). The views of each layer's
    weights into Θ are taken once: Θ must be updated in place (as optimisers do)."""

    def __init__(self, net: FlatModel, thetas: torch.Tensor, decay: float, mean_over_kept: bool = True):
        self.net, self.thetas, self.decay, self.kept = net, thetas.detach(), float(decay), mean_over_kept
        k, self.stacked = len(thetas), len(thetas) > 1
        self.layers = net.chain_layers(self.thetas if self.stacked else self.thetas[0])
        self.first = next(i for i, (kind, *_) in enumerate(self.layers) if kind == "linear")
        self.one = torch.ones((k,) if self.stacked else (), dtype=thetas.dtype, device=thetas.device)
        self._rows = (None, None)  # (weights, ∂R/∂ℓ) of the last call: full-batch weights repeat

    def row_grads(self, weights: torch.Tensor) -> torch.Tensor:
        """∂(Σ_c R_c)/∂ℓ_ci = w_ci / m_c, flattened to [k·m] (autograd's order of operations)."""
        if self._rows[0] is weights:
            return self._rows[1]
        k, n = weights.shape
        count = weights.sum(-1).clamp_min(1.0) if self.kept else n
        if self.stacked:
            per_row = (self.one / count).unsqueeze(-1).expand(k, n) * weights
        else:
            per_row = (self.one / count).expand(n) * weights[0]
        self._rows = (weights, per_row.reshape(-1))
        return self._rows[1]

    def __call__(self, x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The gradient at the current Θ on inputs x [m, d], targets and row weights [k, m]."""
        k, stacked = len(self.thetas), self.stacked
        saved = []  # each layer's (input, output): what its backward reads
        h, _ = run_chain(self.layers, x, k if stacked else None, saved)
        outputs = h.reshape(-1, *h.shape[2:]) if stacked else h
        rows = targets.repeat(k, *[1] * (targets.dim() - 1)) if stacked else targets
        g = self.net.task.output_gradient(outputs, rows, self.row_grads(weights)).reshape(h.shape)
        grads = {}
        for index in range(len(self.layers) - 1, self.first - 1, -1):  # back to the first layer with weights
            (kind, names, weight, bias), (before, after) = self.layers[index], saved[index]
            if kind == "linear":
                # the product's left operand as bmm saw it: the shared inputs broadcast over the copies
                operand = before.expand(k, *before.shape) if stacked and index == self.first else before
                if bias is not None:  # autograd's sum_to_size onto the bias: the sum over the rows
                    grads[names[1]] = g.sum(1) if stacked else g.sum(0)
                if stacked:
                    grads[names[0]] = operand.transpose(1, 2).bmm(g).transpose(1, 2)
                    if index > self.first:
                        g = g.bmm(weight.transpose(1, 2))
                else:
                    grads[names[0]] = g.t().mm(operand)
                    if index > self.first:
                        g = g.mm(weight)
            elif kind == "relu":
                g = torch.ops.aten.threshold_backward(g, after, 0)
            else:
                g = g.reshape(before.shape)
        # the decay's gradient: autograd's (1 · λ/2) · (2 θ), which is the same number as λ θ
        if stacked:
            loss_part = torch.cat([grads[name].reshape(k, -1) for name in self.net.names], dim=1)
            return loss_part + self.thetas * self.decay
        loss_part = torch.cat([grads[name].reshape(-1) for name in self.net.names])
        return (loss_part + self.thetas[0] * self.decay).unsqueeze(0)
