"""Inference for every command: the one loader (loader.py), the fast path (module swaps under the recipe, fast.py)
and the embedding loops."""
