"""Influence functions vs leave-one-out re-training: the library behind the workflow.

Sign convention (used everywhere in this package):

    predicted_loss_change(z) = Δ̂(z) = +(1/n) ∇ℓ(z_t)ᵀ (H + δI)⁻¹ ∇ℓ(z)

is the predicted change of the test loss ℓ(z_t) when training point z is **removed**
(up-weighting by ε = -1/n), and the ground truth it is compared with is

    actual_loss_change(z) = Δ(z) = ℓ(z_t; θ_{-z}) - ℓ(z_t; θ*).

A positive value means "removing z makes the test loss go up" (z is helpful for z_t).
"""

__version__ = "0.1.0"
