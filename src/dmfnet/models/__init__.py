"""DMF, its ablations and the paper's baselines, built by name from one registry."""

from dmfnet.models.registry import (
    available_models,
    create_model,
    get_entry,
    model_inputs,
    register_model,
)

__all__ = ["available_models", "create_model", "get_entry", "model_inputs", "register_model"]
