"""The jobs: one module per command, built on the rooms below (distill, evaluate, subset, report,
reproduce) and their parts (the run directory, monitoring, pictures)."""
