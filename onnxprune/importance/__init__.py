"""Importance criteria behind one interface (see base.py)."""
