"""The ground floor: what every room of frepo may use and that uses nothing of frepo's own.

errors (the one user-error type), rng (named random streams), device (selection, deterministic
kernels), dist (torch.distributed glue), perf (allocator tuning), compiler (torch.compile with an
inductor cache of this CPU's own), atomic (atomic file writes), fields (typed settings: help, choices,
leaf names), log (quiet-by-default logging), registry (dispatch by name), signals (a clean stop on
Ctrl-C / SIGTERM), version.
"""
