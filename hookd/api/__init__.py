"""hookd's HTTP API."""

from hookd.api.app import create_app

__all__ = ["create_app"]
