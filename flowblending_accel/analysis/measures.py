"""The divergence measures the probe computes, by name (no torch: the command line offers them)."""

MEASURES = ("velocity_cos_distance", "velocity_rel_l2", "x0_cos_distance", "x0_rel_l2", "state_rel")
