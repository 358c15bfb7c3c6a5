"""An estimator the project does not ship: the gradient dot product restricted to the last linear
layer. Named in the config as `method: "examples/my_estimator.py:LastLayerSimilarity"`; its options
(the keyword arguments of `__init__`) and `requires` are checked against this source when the DAG
is built.

With a_i the input of the last layer h = W a + b at z_i and e_i = ∂ℓ(z_i)/∂h its output gradient,
∇_W ℓ(z_i) = e_i a_iᵀ and ∇_b ℓ(z_i) = e_i, so

    Δ̂_i = (1/n) ∇_{W,b} ℓ(z_i) · ∇_{W,b} ℓ(z_t) = (1/n) (e_i · e_t) (a_i · a_t + 1)

(without the bias term `+ 1` when the layer has no bias): the `identity` method's Δ̂ with every
parameter before the last layer left out, as if the features were fixed. No Hessian, one forward
and one backward pass over the data.
"""

import torch

from fragility.estimators.base import Estimator, EstimatorScores, last_linear_layer


class LastLayerSimilarity(Estimator):
    """Δ̂_i = (1/n) (e_i · e_t) (a_i · a_t + 1): the last linear layer's gradient dot product."""

    name = "last_layer_similarity"
    requires = ("last_linear_layer",)

    def __init__(self, chunk_size: int = 4096):
        super().__init__()
        self.chunk_size = int(chunk_size)

    def _features(self, x, y, measure=False):
        """(a, e) for every row: the last layer's inputs and ∂ℓ/∂h at its outputs."""
        net, layer = self.context.net, self.layer
        per_row = net.task.measurement if measure else net.task.per_sample_loss
        inputs, outputs = [], []

        def keep(module, args, out):
            inputs.append(args[0])
            outputs.append(out)

        net.model.eval()  # dropout off, BatchNorm on its running statistics, as for every estimator
        hook = layer.register_forward_hook(keep)
        a_rows, e_rows = [], []
        try:
            for start in range(0, len(y), self.chunk_size):
                inputs.clear(), outputs.clear()
                with torch.enable_grad():
                    logits = net.model(x[start:start + self.chunk_size])
                    e, = torch.autograd.grad(per_row(logits, y[start:start + self.chunk_size]).sum(), outputs[0])
                a_rows.append(inputs[0].detach().flatten(1))
                e_rows.append(e.flatten(1))
        finally:
            hook.remove()
        return torch.cat(a_rows), torch.cat(e_rows)

    def fit(self, context):
        super().fit(context)
        self.layer = last_linear_layer(context.net.model)
        context.net.load_into_model(context.theta)
        self.a_train, self.e_train = self._features(context.x_train, context.y_train)
        self.diagnostics = {"layer_parameters": sum(p.numel() for p in self.layer.parameters()),
                            "bias": self.layer.bias is not None}
        return self

    def scores(self, test_points):
        c = self.context
        idx = torch.tensor([tp["index"] for tp in test_points], device=c.x_test.device)
        a_test, e_test = self._features(c.x_test[idx], c.y_test[idx], measure=True)
        bias = 1.0 if self.layer.bias is not None else 0.0
        predicted = (e_test @ self.e_train.T) * (a_test @ self.a_train.T + bias) / c.n_train
        # ‖∇_{W,b} ℓ(z_t)‖ = ‖e_t‖ (‖a_t‖² + 1)^½
        diagnostics = [{"test_grad_norm": float(e_test[t].norm() * (a_test[t].pow(2).sum() + bias).sqrt())}
                       for t in range(len(test_points))]
        # a non-finite row is reported as such (EstimatorScores.checked), not scored
        return EstimatorScores(predicted.detach(), ["ok"] * len(test_points), diagnostics)
