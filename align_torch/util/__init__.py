"""Atomic writes and lossless file names; device choice; torchrun's environment."""
