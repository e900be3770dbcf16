"""The design: the architecture spec, its budget and costs, presets, the run config and the training settings,
and their table as a report shows it.
No torch: every page reads these at once."""
