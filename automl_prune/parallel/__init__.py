"""Ray: the session of a run, evaluation actors and the Tune re-ranking ladder."""
