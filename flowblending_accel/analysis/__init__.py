"""Velocity-divergence analysis and automatic stage-boundary calibration."""
