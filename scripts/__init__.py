"""Scripts that prepare data and device sessions; run each as `python -m scripts.NAME`."""
