"""Plumbing the tools share: atomic output files, where a measurement ran, progress that CI logs can read."""
