"""The provider registry: the one place that lists providers (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

from orchestrator.errors import BadInputError

from .base import Provider

__all__ = ["PROVIDERS", "Provider", "get_provider"]

# name -> "module:Class"; modules are imported only when a provider is used.
PROVIDERS: dict[str, str] = {
    "vast": "providers.vast:VastProvider",
    "runpod": "providers.runpod:RunPodProvider",
    "skypilot": "providers.skypilot:SkyPilotProvider",
    "local": "providers.local:LocalProvider",
    "runpod-serverless": "providers.runpod_serverless:RunPodServerlessProvider",
    "hf": "providers.hf_endpoints:HfEndpointsProvider",
}


def get_provider(name: str, **kwargs: Any) -> Provider:
    """An adapter instance by name; BadInputError for an unknown name."""
    target = PROVIDERS.get(name)
    if target is None:
        raise BadInputError(
            "provider", f"unknown provider {name!r}; accepted: {', '.join(PROVIDERS)}"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**kwargs)
