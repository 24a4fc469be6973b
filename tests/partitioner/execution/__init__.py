"""Tests of partitioner.execution."""
