"""Tests of core.runs."""
