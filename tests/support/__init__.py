"""Helpers shared by several test packages (not fixtures: plain functions and classes)."""
