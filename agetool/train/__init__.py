"""Training: data, the LATS objective, the loop (single process or torchrun), dataset preparation."""
