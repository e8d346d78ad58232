"""Inference for every command: the fast path (module swaps under the recipe) and the embedding loops."""
