"""The outer step's device work as one CUDA graph per pool model (`--compile graph`).

A small step (MNIST or CIFAR-10 at IPC 10) launches a few hundred kernels of microseconds each, so
eager PyTorch spends more time launching than the GPU spends computing. Capturing the step's device
work once per pool model (the real-batch gather, both feature passes, the solve, the meta-backward,
LAMB and the model's online Adam step) and replaying it costs one launch per step.

What a graph cannot do is done on the host around it, in the eager order: the batch, the online
subsample and the next model are drawn from the same generators; LAMB's step count and learning
rate advance in Python and reach the graph as a 3-vector (lr, 1/(1-b1^t), 1/(1-b2^t)); a pool
model's reset (1 step in ~100) runs eagerly and in place, so its graph stays valid. A graph reads
its inputs from fixed buffers and writes its outputs into memory its next replay reuses: inputs
are copied in before each replay and the metrics copied out after it. All graphs share one memory
pool: they never run at once, and nothing of a replay is read after the next one starts.

`capture=False` runs the same bookkeeping without graphs (the CPU tests check it against the eager
step). The first uses of each model run eagerly on the capture stream (lazy optimiser state,
cuBLAS and cuDNN workspaces), as torch asks before a capture. A capture that fails stops the run with a
message to resume it with `--compile off`: torch.cuda.graph ends a failed capture before it restores the
stream, which leaves the allocator routing this thread's memory to the graph's pool, no state to go on in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..base.device import host_to_device
from ..base.errors import FrepoError

Body = Callable[..., dict[str, torch.Tensor]]
WARMUP = 3  # eager runs of the body, the first of each model included, before the first capture


class StepGraphs:
    def __init__(self, body: Body, device: torch.device, capture: bool = True):
        """body(i, idx, x_real, subsample, scalars) -> metrics: model i's device work of one step."""
        self.body, self.device, self.capture = body, device, capture
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self.warmed: set[int] = set()
        self.runs = 0
        self.inputs: dict[str, torch.Tensor] | None = None
        if capture:
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream(device)

    def step(
        self,
        i: int,
        idx: torch.Tensor,
        x_real: torch.Tensor | None,
        subsample: torch.Tensor | None,
        scalars: tuple[float, float, float],
    ) -> dict[str, torch.Tensor]:
        """Model i's device work with these inputs (device tensors; LAMB's host scalars); fresh metrics."""
        lr, c1, c2 = scalars
        # The reciprocals in float32: what CUDA's division by a Python float multiplies by.
        host = torch.cat([torch.tensor([lr]), torch.tensor([c1, c2]).reciprocal()])
        # Every input is on the device before it is copied in (the scalars page-locked, not waited for).
        fresh = {"idx": idx, "x_real": x_real, "subsample": subsample, "scalars": host_to_device(host, self.device)}
        if self.inputs is None:
            self.inputs = {k: torch.empty_like(v, device=self.device) for k, v in fresh.items() if v is not None}
        for name, value in fresh.items():
            if value is not None:
                self.inputs[name].copy_(value, non_blocking=True)
        if i in self.graphs:
            graph, outputs = self.graphs[i]
            graph.replay()
        elif self.capture and i in self.warmed and self.runs >= WARMUP:
            outputs = self._capture(i)
        else:
            outputs = self._eager(i)
        self.runs += 1
        return {name: value.clone() for name, value in outputs.items()}

    def _call(self, i: int) -> dict[str, torch.Tensor]:
        s = self.inputs
        assert s is not None  # _call runs only from step(), which fills the input buffers first
        scalars = (s["scalars"][0], s["scalars"][1], s["scalars"][2])
        return self.body(i, s["idx"], s.get("x_real"), s.get("subsample"), scalars)

    def _eager(self, i: int) -> dict[str, torch.Tensor]:
        """The body run now (a real step); on the capture stream while warming up for a capture."""
        self.warmed.add(i)
        if not self.capture:
            return self._call(i)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            outputs = self._call(i)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return outputs

    def _capture(self, i: int) -> dict[str, torch.Tensor]:
        """Record model i's graph (a capture runs nothing), then replay it for this step."""
        graph = torch.cuda.CUDAGraph()
        previous = torch.cuda.current_stream(self.device)
        try:
            # thread_local: only this thread's unsafe calls abort the capture. The prefetch thread of a streamed
            # run may be page-locking the next batch meanwhile (cudaHostAlloc, event queries on other streams),
            # which the default "global" mode would turn into a failed capture, or an error in that thread.
            # torch.cuda.graph synchronises and empties the cache of the *current* device: on --device cuda:1
            # in one process that was GPU 0 (a context made there, another job's GPU waited for).
            with (
                torch.cuda.device(self.device),
                torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"),
            ):
                outputs = self._call(i)
        except RuntimeError as error:  # an operation CUDA graphs refuse (a host sync, a pageable copy, ...)
            torch.cuda.set_stream(previous)
            raise FrepoError(
                f"CUDA graph capture of the outer step failed ({error}); run the same command with --compile off "
                "to resume from the last checkpoint without graphs"
            ) from error
        self.graphs[i] = (graph, outputs)
        graph.replay()
        return outputs
