"""Cost of an architecture: analytic FLOPs and parameters, measured latency."""
