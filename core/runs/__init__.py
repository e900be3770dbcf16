"""Runs on disk: the run folder and its life cycle, its reproducibility record and reproductions, the device queue,
speeds kept for estimates, progress.
No torch: the pages read runs at once."""
