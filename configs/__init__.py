"""Experiment configs: one file per experiment; shared pieces live in common.py."""
