"""Placement: which target runs each op, chosen on the problem as plain numbers.

tag (support rules) -> build_problem (costs, tensors, links, memory) -> baselines, reduction and the CP-SAT
solver, each scoring placements with the one `score`, for an objective value from `objectives`.
"""
