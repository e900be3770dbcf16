"""Tests of core.data."""
