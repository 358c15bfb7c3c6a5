"""Architectures: the shipped networks and the registry that names them (and a user's own)."""
