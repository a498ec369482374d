"""`flowblending-accel check`: the CI performance-regression gate."""
