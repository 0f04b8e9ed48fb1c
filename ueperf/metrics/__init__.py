"""Measurements on models and data: ACM (spec §4.2)."""
