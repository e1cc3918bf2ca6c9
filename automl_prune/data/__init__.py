"""Data: local datasets, streamed image folders, the user's data, and the task (loss and metric)."""
