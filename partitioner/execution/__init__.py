"""Execution: a placed model, run. Split into acyclic partitions, one submodule per partition on its target's
device, checked against the original model; also the torch.compile backend that does all of this per graph.
"""
