"""Datasets as `Split`s: the split type, the shipped loaders and the registry that names them."""
