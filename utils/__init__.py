"""Shared plumbing: configuration, errors, checkpoints."""
