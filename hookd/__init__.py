"""hookd: a self-hostable webhook service implementing Featurebase's v2 Webhooks API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
