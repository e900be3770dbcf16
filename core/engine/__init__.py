"""Training: the optimizer and schedule, one training step, the loop of a run, and several processes."""
