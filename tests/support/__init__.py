"""Shared test helpers (real peers on loopback): see ``issuer.py``."""
