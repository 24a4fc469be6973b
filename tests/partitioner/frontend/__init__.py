"""Tests of partitioner.frontend."""
