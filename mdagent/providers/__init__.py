"""Providers: one folder each, described by a ``Provider`` (``base.py``), listed in ``registry.py``."""
