"""Downstream experiments built on distillation and evaluation: class-incremental continual learning
(`continual`) and the membership-inference defence (`privacy`, with its victims in `victims` and the
attacks in `attacks`). Each is an `experiment.Experiment`: a resumable job with a typed config, named
presets, a JSON of documented keys, a table and a plot."""
