"""Placement: exact MILP, a fast heuristic, and the baselines they are compared with."""
