"""Robustness: Lipschitz bounds, Lipschitz and interval certificates, attacks (docs/math.md §6, §12)."""
