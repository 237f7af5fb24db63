"""NixFleet agent: keeps a host connected to a NixFleet dashboard and runs fleet commands on it."""

from .buildinfo import version

__all__ = ["version"]
