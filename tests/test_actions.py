"""The distillation loop's plug-ins: their schedule, their order, and the one host copy they share."""

from __future__ import annotations

import json

from frepo.config import presets
from frepo.jobs.actions import Action, Moment, itstime
from frepo.jobs.distill import Distiller

OVERRIDES = dict(steps=7, width=8, num_models=2, max_online_updates=4, batch_size=32, eval_steps=10)
OVERRIDES.update(log_every=3, eval_every=2, checkpoint_every=5, snapshot_every=0)


def test_itstime_is_big_vision_s_schedule():
    assert [s for s in range(1, 11) if itstime(s, 3)] == [3, 6, 9]
    assert [s for s in range(1, 11) if itstime(s, 3, total=10, last=True)] == [3, 6, 9, 10]
    assert not any(itstime(s, 0) or itstime(s, None) for s in range(1, 11))
    assert [s for s in range(1, 11) if itstime(s, 0, total=10, last=True)] == [10]


class Recorder(Action):
    """Records when it runs and which host copy it was handed."""

    def __init__(self, name: str, calls: list, every: int = 1):
        self.name, self.calls, self.every = name, calls, every

    def due(self, step: int) -> bool:
        return itstime(step, self.every)

    def at_end(self, step: int) -> bool:
        return True

    def __call__(self, now: Moment) -> None:
        ds = now.host_set()
        assert ds.images.device.type == "cpu" and ds.meta["step"] == now.step
        self.calls.append((self.name, now.step, now.final, id(ds.images), now.val_acc))


def test_actions_run_in_order_on_their_steps_and_share_one_host_copy_per_step(tmp_path):
    distiller = Distiller(presets.resolve("digits", 2, overrides=OVERRIDES), tmp_path / "run")
    names = [type(a).__name__ for a in distiller.actions]
    assert names == ["LossWatch", "Snapshots", "MetricsLog", "Validation", "ChanceWatch", "Checkpoint"]
    calls: list = []
    # One plug-in before validation and one after it (every other step): the same copy, and the second
    # sees the step's validation accuracy.
    distiller.actions.insert(3, Recorder("before", calls))
    distiller.actions.insert(5, Recorder("after", calls, every=2))
    result = distiller.run()

    in_loop = [(n, s) for n, s, final, _, _ in calls if not final or s != 7]
    assert [s for n, s in in_loop if n == "before"] == [1, 2, 3, 4, 5, 6]
    assert [s for n, s in in_loop if n == "after"] == [2, 4, 6]
    copies = {}
    for _, step, _, copy, _ in calls:
        copies.setdefault(step, set()).add(copy)
    assert all(len(c) == 1 for c in copies.values()), copies  # one host copy per step, however many ask
    validated = {s: acc for n, s, _, _, acc in calls if n == "after" and acc is not None}
    assert sorted(validated) == [2, 4, 6, 7]  # every eval_every steps, and the end's validation
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "val_acc" in r) for r in records] == [
        (2, True),
        (3, False),
        (4, True),
        (6, False),
        (6, True),
        (7, False),
        (7, True),
    ]
    assert result.val_accuracy == records[-1]["val_acc"]  # from memory, the last validation
    assert validated[7] == records[-1]["val_acc"]


def test_validation_follows_the_budget(tmp_path, caplog):
    from frepo.config import DistillConfig

    assert DistillConfig(steps=2).validation_steps() == 100  # at least MIN_VALIDATION_STEPS
    assert DistillConfig(steps=400).validation_steps() == 400  # the run's own steps
    assert DistillConfig(steps=500_000).validation_steps() == 1000  # the reference's check at its budget
    assert DistillConfig(steps=2, eval_steps=30).validation_steps() == 30  # given: as given
    assert DistillConfig(steps=2, eval_steps=0).validation_steps() is None  # 0: the reference step table
    overrides = {k: v for k, v in OVERRIDES.items() if k != "eval_steps"}
    config = presets.resolve("digits", 2, overrides={**overrides, "steps": 2, "eval_every": 0})
    config.eval_steps = None  # the digits preset names 500; a run that names none
    with caplog.at_level("INFO", logger="frepo"):
        Distiller(config, tmp_path / "run").run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_steps"] for r in records if "val_acc" in r] == [100]
    assert "validating: 1 network × 100 steps on the 20 images" in caplog.text


def test_a_run_recorded_with_the_old_validation_default_resumes_with_it(tmp_path):
    """Runs made before the budget-aware default recorded eval_steps 1000; the same command (no
    --eval-steps) still resumes them, with their 1000 steps; a run without a record gets the new default."""
    overrides = {k: v for k, v in OVERRIDES.items() if k != "eval_steps"}
    config = presets.resolve("digits", 2, overrides={**overrides, "steps": 2, "eval_every": 0})
    config.eval_steps = 1000
    old = Distiller(config, tmp_path / "run")
    old.run_dir.release()
    config.eval_steps = None
    again = Distiller(config, tmp_path / "run")
    again.run_dir.release()
    assert again.config.eval_steps == 1000
    fresh = Distiller(config, tmp_path / "fresh")
    fresh.run_dir.release()
    assert fresh.config.eval_steps is None and fresh.config.validation_steps() == 100
