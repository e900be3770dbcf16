"""The network: building it from a spec, checkpoints, running it over images, and pictures of what it sees."""
