"""Channel pruning: criteria, calibration, reconstruction and sparsity regularisation."""
