"""A study: the grid of cells read from the config, the workflow's steps as plain functions,
the choice of test and training points, and the ground truths with their noise."""
