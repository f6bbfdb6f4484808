"""Dock widgets, one small module each."""
