"""Scoring architectures: the evaluator (proxy scores), the re-ranking ladder's rule and its rung job."""
