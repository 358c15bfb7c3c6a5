"""A network as a function of one flat parameter vector θ ∈ R^p (`torch.func.functional_call`),
with the Task that turns its outputs into losses."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .task import CrossEntropyTask, Task


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

    def logits(self, theta: torch.Tensor, x: torch.Tensor, buffers: dict | None = None) -> torch.Tensor:
        return functional_call(self.model, (self.unflatten(theta), self.buffers if buffers is None else buffers), (x,))

    def per_sample_losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ℓ(z_i, θ) for every row, the task's loss of the outputs, shape [n]."""
        return self.task.per_sample_loss(self.logits(theta, x), y)

    def measurements(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's test measurement for every row (the loss unless the task says otherwise), [n]."""
        return self.task.measurement(self.logits(theta, x), y)
