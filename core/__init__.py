"""ResNet Studio's logic: specs, budgets, models, data, training, runs, inference. No UI here."""
