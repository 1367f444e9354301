"""One protocol, one architecture, `models` fresh networks on a set: the loop every protocol shares."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..base.device import deterministic_kernels, resolve_device
from ..base.log import progress_bar, warn
from ..base.rng import stream_seed
from ..io.artifact import DistilledSet
from ..models import SIZED
from .config import EvalConfig
from .finished import FinishedNetworks
from .protocol import EvalSetup
from .protocols import PROTOCOLS
from .results import EvalResult


def evaluate_set(
    ds: DistilledSet,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: EvalConfig,
    arch: str | None = None,
    *,
    progress: bool = False,
    on_device: tuple[torch.Tensor, torch.Tensor] | None = None,
    finished: FinishedNetworks | None = None,
    label: str | None = None,
) -> EvalResult:
    """Train `config.models` fresh `arch` networks (default: the config's first architecture) on `ds`
    with `config.protocol` and test each on (test_x M×C×H×W in the set's preprocessed space, test_y
    (M,) class ids; both on the host). `config` is trusted to be validated (`EvalConfig.validate`).

    `on_device`: the set's (images, labels) already on the evaluation device, the same values as ds's (a
    run validating its live set: no round trip through the host); by default they are copied there.
    `finished`: the networks of this evaluation that finished before an interruption, read back instead of
    trained again; each network is added to it as it finishes."""
    protocol = PROTOCOLS[config.protocol]
    options = config.options()
    device = resolve_device(config.device)
    images, labels = on_device if on_device is not None else (ds.images, ds.labels)
    if images.shape != ds.images.shape or labels.shape != ds.labels.shape:
        raise ValueError(
            f"on_device holds images {tuple(images.shape)} and labels {tuple(labels.shape)}; the set "
            f"{tuple(ds.images.shape)} and {tuple(ds.labels.shape)}"
        )
    setup = EvalSetup(
        ds,
        images.detach().to(device).float(),
        labels.detach().to(device),
        test_x,
        test_y,
        arch or config.archs()[0],
        config.seed,
        device,
        config.width,
        config.network_depth(ds.meta),
        progress,
    )
    plan = protocol.plan(setup, options)  # rejects a set these options cannot use, before any training
    streams = [f"{protocol.stream}/model{i}" for i in range(config.models)]
    start = time.perf_counter()
    accs: list[float] | None = None
    read_back = 0
    how = config.together_mode(device, setup.images)
    if protocol.train_and_test_many and config.models > 1 and how:
        kept = [finished.accuracy(s, how, len(streams)) for s in streams] if finished else [None]
        known = [acc for acc in kept if acc is not None]
        if len(known) == len(kept):  # networks trained together finish together: all of them, or train them again
            accs, read_back = known, len(known)
        else:
            with deterministic_kernels(device):
                accs = protocol.train_and_test_many(setup, options, streams, how)
            if accs is not None and finished:
                finished.put(streams, accs, how)
    together = accs is not None
    if not together and how == "stacked" and config.together == "on" and config.models > 1:
        warn(
            f"--together on: {setup.arch} keeps batch-norm statistics, which stacked networks cannot; its networks "
            "train one after the other (--together streams trains any architecture at once on a GPU)"
        )
    if accs is None:
        accs = []
        desc = f"evaluate ({setup.arch}, {protocol.name}{f', {label}' if label else ''})"  # label: what is trained on
        with progress_bar(streams, desc=desc, disable=not progress, leave=False) as bar:
            for name in bar:
                acc = finished.accuracy(name) if finished else None
                read_back += acc is not None
                if acc is None:
                    with deterministic_kernels(device):  # the same seed gives the same numbers on a GPU too
                        acc = protocol.train_and_test(setup, options, name)
                    if finished:
                        finished.put([name], [acc])
                accs.append(acc)
    return EvalResult(
        protocol.name,
        setup.arch,
        accs,
        float(np.mean(accs)),
        float(np.std(accs)),
        plan.steps,
        time.perf_counter() - start,
        config.split,
        config.seed,
        {
            **plan.extra,
            "together": together,
            "together_mode": how if together else None,
            "networks_read_back": read_back,  # finished before an interruption; `seconds` counts the others
            "model_streams": streams,
            "model_seeds": [stream_seed(config.seed, s) for s in streams],
            "width": config.width if setup.arch in SIZED else None,  # the others have the sizes of their definition
            "depth": setup.depth if setup.arch in SIZED else None,
            "device": str(device),
        },
    )
