"""Pure torch models for medinfer, behind one registry.

Nothing here reads files, loads data or knows about HTTP: ``pipelines`` builds on these modules and
``app`` builds on ``pipelines``.
"""

from models.registry import ModelSpec, create_model, get_model_spec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]
