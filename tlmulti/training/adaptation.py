"""Unsupervised domain adaptation hooks for the shared trainer."""

from __future__ import annotations

from tlmulti.errors import RecipeError


def make_adapter(recipe, task, parts):
    """The adapter for ``recipe.adaptation.method``, or None when no adaptation is asked for."""
    method = recipe.adaptation.method
    if method == "none":
        return None
    raise RecipeError(f"Key 'adaptation.method': '{method}' is not available in this version.")
