"""hookd benchmarks: local receivers, the raw-sender baseline and shared helpers."""
