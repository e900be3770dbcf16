"""Tests of core.design."""
