"""Pyralog: a distributed log whose every connection runs over WireGuard."""

__version__ = "0.1.0"
