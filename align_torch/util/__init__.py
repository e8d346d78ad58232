"""Atomic writes and lossless file names; device choice."""
