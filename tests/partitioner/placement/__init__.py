"""Tests of partitioner.placement."""
