"""FRePo itself, on tensors: kernel ridge regression (krr), LAMB and schedules (optim), the synthetic set
(synthetic), the model pool (pool) and the outer step (trainer). No files, no datasets, no run
management: `frepo.distill` drives it."""
