"""Tests of partitioner.reporting."""
