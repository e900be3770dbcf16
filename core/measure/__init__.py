"""Measuring: training throughput against the seeds' loop, inference latency, this machine's speed."""
