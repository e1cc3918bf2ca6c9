"""What people look at: the summary table, the plots and the run report."""
