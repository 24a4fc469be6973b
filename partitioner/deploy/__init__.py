"""Deploying a plan: its partitions as stages run by workers, one per device (Ray engine)."""
