"""Tests of core.deploy."""
