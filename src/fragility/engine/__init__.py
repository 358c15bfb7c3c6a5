"""The influence engine, independent of any workflow: the Task (everything model-specific), θ as a
flat vector, the training objective and its curvature products, inverse-Hessian solvers, scoring
of every training point, and the batched trainer of k parameter copies."""
