"""The network: building it from a spec, checkpoints, running it over images, pictures of what it sees, and
what torch runs on here."""
