"""Tests of core/ (a folder per package, as core/ has them), pages/ (tests/pages) and the top-level modules."""
