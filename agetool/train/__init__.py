"""Training: ``config`` (settings), ``data`` (pairs), ``losses`` (the objective), ``trainer`` (the
step and the run, single process or torchrun), ``checkpoints`` (save, resume, starting points,
export), ``report`` (events, samples, TensorBoard) and ``prepare`` (dataset folders)."""
