"""Training: the fine-tune loop and the process-wide torch settings."""
