"""One FRePo outer step on tensors, without any run management (that is `frepo.jobs.distill`).

step(): a real batch -> meta-step (kernel ridge regression on the features of the current pool
model, loss back-propagated into the synthetic images and labels) -> LAMB update -> the pool model
takes its online step or is reset -> the next pool model is drawn.
The benchmarks time exactly this object, so what they measure is what a run does.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
from torch.profiler import record_function

from ..base.compiler import torch_compile
from ..base.device import deterministic_kernels, host_to_device, page_locked, tf32_passes
from ..base.dist import DistContext
from ..base.errors import FrepoError
from ..base.prefetch import Prefetcher
from ..base.rng import generator
from ..config import DistillConfig
from ..models import build_model, conv_arch
from .graphs import StepGraphs
from .krr import centered_one_hot, krr_weights, label_margin_loss, mse_loss
from .optim import Lamb, cosine_decay
from .pool import ModelPool
from .synthetic import SyntheticSet, init_from_real


class BatchSource(Protocol):
    """Real images gathered per batch: `source[idx]` is float32 B×C×H×W on the host."""

    shape: torch.Size

    def __len__(self) -> int: ...

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor: ...


class BatchSampler:
    """Indices of real batches: epoch-wise seeded permutations; a batch may span two epochs."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need > 0:
            if self.pos >= len(self.perm):
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = self.perm[self.pos : self.pos + need]
            self.pos += len(take)
            need -= len(take)
            parts.append(take)
        return torch.cat(parts)

    def peek(self) -> torch.Tensor:
        """The batch `next()` will return, without advancing (for prefetching)."""
        perm, pos, state = self.perm, self.pos, self.gen.get_state()
        try:
            return self.next()
        finally:
            self.perm, self.pos = perm, pos
            self.gen.set_state(state)

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos, "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], int(state["pos"])
        self.gen.set_state(state["generator"])


# Real-batch features need no gradient, so computing them in chunks costs nothing and bounds the
# activation memory (the first block's output for 1024 CIFAR images alone is 537 MB).
REAL_CHUNK = 512


def _equal_chunks(x: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """Split N×… into ceil(N / chunk_size) near-equal parts (no tiny remainder chunk)."""
    return torch.tensor_split(x, -(-len(x) // chunk_size))


def _embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.embed(x)


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


PASS_MODES = ("off", "on", "cudagraphs")  # COMPILE_MODES' "graph" captures whole steps (frepo.method.graphs)


class Passes:
    """The network passes of a step, eager or under torch.compile: `features` (differentiable in x, the
    support set), `features_no_grad` (the real batch) and `logits` (the pool's online step).

    mode "on": torch.compile (inductor) with static shapes; "cudagraphs": the same plus CUDA graphs
    (torch's "reduce-overhead" mode; CUDA only). The pool's models are instances of one class with
    parameters of the same shapes, and torch.compile takes a module's parameters as inputs, so swapping
    the current model, its online updates and its re-initialisation reuse the compiled code
    (tests/test_trainer.py counts the compilations). Under CUDA graphs, parameters are inputs read at
    fixed addresses, so torch records one graph per pool model (pytorch/pytorch#126822) and keeps them:
    online updates and resets write in place, at the same addresses. Inductor's kernels sum in another
    order than eager ones: results agree to float rounding, not bit for bit.

    A CUDA graph's outputs live in its memory pool and its next replay overwrites them, so each outer
    step starts a new generation (`begin_step`), and the real batch's chunks, one graph replayed per
    chunk, are copied out before the next chunk runs.
    """

    def __init__(self, mode: str = "off"):
        if mode not in PASS_MODES:
            raise ValueError(f"unknown compile mode {mode!r} for the passes; use one of {PASS_MODES}")
        self.graphed = mode == "cudagraphs"
        self._embed, self._logits = _embed, _logits
        if mode != "off":
            options = {"dynamic": False, "mode": "reduce-overhead" if mode == "cudagraphs" else None}
            self._embed, self._logits = torch_compile(_embed, **options), torch_compile(_logits, **options)

    def features(self, model: torch.nn.Module, x: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        """Features of x (N×C×H×W -> N×D), differentiable in x. With 0 < chunk_size < N the forward runs
        in chunks under activation checkpointing: memory grows with the chunk, not with N (large support
        sets), for the price of a second forward pass in the backward."""
        if chunk_size <= 0 or len(x) <= chunk_size:
            return self._embed(model, x)
        from torch.utils.checkpoint import checkpoint

        parts = []
        for part in _equal_chunks(x, chunk_size):
            # The forward draws no random numbers, so no RNG state is stashed for the recompute: reading the
            # CUDA generator's state is forbidden inside a CUDA graph capture (--compile graph, the GPU's auto).
            out = checkpoint(self._embed, model, part, use_reentrant=False, preserve_rng_state=False)
            parts.append(out.clone() if self.graphed else out)  # the next chunk's replay overwrites `out`
        return torch.cat(parts)

    def begin_step(self) -> None:
        """Mark an outer step's start: under CUDA graphs, the previous step's outputs are done with."""
        if self.graphed:
            torch.compiler.cudagraph_mark_step_begin()

    @torch.no_grad()
    def features_no_grad(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if len(x) <= REAL_CHUNK:
            return self._embed(model, x)
        parts = []
        for part in _equal_chunks(x, REAL_CHUNK):
            out = self._embed(model, part)
            parts.append(out.clone() if self.graphed else out)  # the next chunk's replay overwrites `out`
        return torch.cat(parts)

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._logits(model, x)


EAGER = Passes("off")


def feature_precision(device: torch.device, precision: str):
    """Context for a feature pass: the real batch's (no gradient flows through it) or the support set's.

    fp32: float32 as torch computes it by default: exact on a CPU; on CUDA exact matmuls, while cuDNN may run
    the convolutions in TensorFloat-32 (torch's default `cudnn.allow_tf32`, as JAX's default precision did
    for the reference on Ampere GPUs; exact float32 convolutions need that flag off). tf32: TensorFloat-32
    matmuls and convs on CUDA. bf16: autocast to bfloat16. 'auto' is tf32 on CUDA, fp32 elsewhere.
    The kernel solve always runs in float32 features and a float64 Cholesky.
    """
    if precision == "auto":
        precision = "tf32" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        # No cast cache: inside a CUDA graph it would hold tensors of the graph's memory.
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    if precision == "tf32" and device.type == "cuda":
        return tf32_passes()
    return contextlib.nullcontext()


# The step's phases, as named profiler scopes (in order).
PHASES = ("real_features", "support_forward", "solve", "meta_backward", "lamb", "online")


def meta_step(
    model: torch.nn.Module,
    syn: SyntheticSet,
    x_real: torch.Tensor,
    y_real: torch.Tensor,
    use_flip: bool,
    reg: float,
    chunk_size: int = 0,
    precision: str = "fp32",
    support_precision: str = "fp32",
    passes: Passes | None = None,
) -> dict[str, torch.Tensor]:
    """One meta-gradient: sets .grad of the synthetic set's trainable tensors; returns detached metrics.

    x_real: B×C×H×W preprocessed real images; y_real: B×K centred one-hot targets. `precision` is the
    real-batch feature pass's (`feature_precision`), `support_precision` the support forward's (fp32 or
    bf16: the meta-gradient flows back through it). `passes`: the network passes (compiled or eager).
    """
    passes = passes or EAGER
    model.eval()  # batch norm uses running statistics in both feature passes
    # The named phases (`PHASES`) let a profiler split the step (benchmarks/bench_step.py).
    with record_function("frepo/real_features"), feature_precision(x_real.device, precision):
        feat_real = passes.features_no_grad(model, x_real).to(syn.images.dtype)  # back from bf16 under autocast
    x_s, y_s = syn.images, syn.labels
    if use_flip:
        x_s, y_s = torch.cat([x_s, x_s.flip(-1)]), torch.cat([y_s, y_s])
    with record_function("frepo/support_forward"), feature_precision(x_s.device, support_precision):
        feat_s = passes.features(model, x_s, chunk_size).to(syn.images.dtype)
    with record_function("frepo/solve"):
        weights = krr_weights(feat_s, y_s, reg)
        pred = feat_real @ weights
        kernel = mse_loss(pred, y_real)
        label = label_margin_loss(syn.labels)
        loss = kernel + label
    params = syn.trainable()
    # Gradients for the synthetic set only: autograd then skips the weight gradients of the network.
    with record_function("frepo/meta_backward"):
        grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads):
        p.grad = g
    acc = (pred.argmax(-1) == y_real.argmax(-1)).float().mean()
    return {"loss": loss.detach(), "kernel_loss": kernel.detach(), "label_loss": label.detach(), "acc": acc}


class FRePoTrainer:
    """Synthetic set, its LAMB optimiser, the model pool and the real-batch sampler of one run.

    x_train: N×C×H×W preprocessed real images (moved to `device`), or a `BatchSource`
    (`frepo.data.StreamingImages`) that gathers and preprocesses each batch on the host (bounded memory;
    the next batch is prefetched);
    y_train: (N,) int64 labels.
    """

    def __init__(
        self,
        config: DistillConfig,
        x_train: torch.Tensor | BatchSource,
        y_train: torch.Tensor,
        num_classes: int,
        device: torch.device,
        ctx: DistContext | None = None,
        start: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        self.config, self.device, self.ctx = config, device, ctx or DistContext()
        self.num_classes = num_classes
        seed = config.seed
        classes = config.data.class_ids(num_classes)  # every class, or a continual-learning task's
        start_labels = None
        if start is None:
            images, class_ids = init_from_real(x_train, y_train, classes, config.ipc, seed)
        else:  # `--init FILE`: images in this run's preprocessing, N×K labels (frepo.io.foreign.load_start)
            images, start_labels = start
            class_ids = start_labels.argmax(-1)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.prefetch: Prefetcher | None  # a streamed (host, not tensor) training split's batch loader
        if not isinstance(x_train, torch.Tensor):
            # The worker thread also page-locks the batch, so sending it does not wait for the GPU.
            self.x_train, self.prefetch = x_train, Prefetcher(lambda idx: page_locked(x_train[idx], device))
        else:
            # One copy: `.to(device).contiguous(channels_last)` held the training set twice on the GPU.
            self.x_train, self.prefetch = x_train.to(device, memory_format=self.memory_format), None
        self.y_train = y_train.to(device)  # ids: one-hot targets are made per batch (ImageNet's would be 5 GB)
        self.syn = SyntheticSet(images, class_ids, num_classes, config.learn_labels, start_labels).to(device)
        self.syn.images.data = self.syn.images.data.contiguous(memory_format=self.memory_format)
        self.lamb = Lamb(
            self.syn.trainable(), lr=cosine_decay(config.lr, config.steps, config.lr_final_ratio), eps=1e-6
        )
        c, h, w = x_train.shape[1:]
        m = config.model

        def make_model(gen: torch.Generator) -> torch.nn.Module:
            model = build_model(conv_arch(m.norm), (c, h, w), num_classes, generator=gen, width=m.width, depth=m.depth)
            return model.to(memory_format=self.memory_format)

        pool_generator = generator(seed, "pool")
        self.per_rank_pool = config.pool.pool_mode == "per-rank" and self.ctx.enabled
        # Per rank: this rank's own initialisations; the slot draws and online subsamples stay shared.
        init_generator = generator(seed, f"pool-init-rank{self.ctx.rank}") if self.per_rank_pool else None
        mode = config.compile
        if mode == "auto":
            mode = "graph" if device.type == "cuda" and not self.ctx.enabled else "off"
        graphed = mode == "graph"
        if graphed and device.type != "cuda":
            raise FrepoError(f"--compile graph captures CUDA graphs: it needs a CUDA device, not {device}")
        if graphed and self.ctx.enabled:
            raise FrepoError("--compile graph runs in one process; use --compile off with torchrun")
        self.passes = Passes("off" if graphed else mode)
        self.pool = ModelPool(
            make_model, config.pool, pool_generator, device, init_generator, self.passes.logits, capturable=graphed
        )
        self.graphs = StepGraphs(self._device_step, device) if graphed else None
        if self.ctx.enabled:
            # Every rank built the same start from the same seeds; rank 0's copy makes it the same by
            # construction (a GPU's eigendecomposition or initialisation need not repeat to the bit elsewhere).
            shared = list(self.syn.state_dict().values())
            if not self.per_rank_pool:
                shared += [t for model in self.pool.models for t in model.state_dict().values()]
            self.ctx.broadcast_(shared)
            self._sync_pool_gradients()
        self.sampler = BatchSampler(len(x_train), config.batch_size, generator(seed, "batches"))

    def _sync_pool_gradients(self) -> None:
        """Average online gradients over ranks, so the replicated pool stays bit-identical."""

        def averaged(g: torch.Tensor) -> torch.Tensor:
            self.ctx.mean_([g])  # in place
            return g

        for model in self.pool.models:
            for p in model.parameters():
                p.register_hook(averaged)

    def step(self) -> dict[str, torch.Tensor]:
        """One outer step; returns detached metric tensors (no host synchronisation)."""
        with deterministic_kernels(self.device, self.config.deterministic):
            return self._step()

    def _step(self) -> dict[str, torch.Tensor]:
        # The host's part, in a fixed order: the draws (batch, online subsample), LAMB's count, and after
        # the device work the pool's reset or count and its next model. The device work runs eagerly or as
        # the current model's CUDA graph (`--compile graph`); a reset step always runs eagerly.
        self.passes.begin_step()
        idx = self.ctx.shard(self.sampler.next())
        x_real = None
        if self.prefetch is not None:
            upcoming = self.ctx.shard(self.sampler.peek())
            x_real = host_to_device(self.prefetch.get(idx, upcoming), self.device)
        idx = host_to_device(idx, self.device)
        reset = self.pool.reset_due()
        subsample = None if reset else self.pool.online_subsample(len(self.syn.images), self.device)
        scalars = self.lamb.advance()
        i = self.pool.current
        if self.graphs is not None and not reset:
            metrics = self.graphs.step(i, idx, x_real, subsample, scalars)
        else:
            metrics = self._device_step(i, idx, x_real, subsample, scalars, online=not reset)
        if reset:
            with record_function("frepo/online"):
                self.pool.reset_current()
        self.pool.finish(online=not reset)
        return metrics

    def _device_step(
        self,
        i: int,
        idx: torch.Tensor,
        x_real: torch.Tensor | None,
        subsample: torch.Tensor | None,
        scalars: tuple,
        online: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Pool model i's device work of one step: the meta-gradient on the real batch idx (or the streamed
        x_real), LAMB with `scalars` (Lamb.advance's, or a graph's tensors) and, if `online`, the model's
        online step on the updated set's `subsample`. No draws and no host synchronisation."""
        cfg = self.config
        if x_real is None:
            x_real = self.x_train[idx]
        metrics = meta_step(
            self.pool.models[i],
            self.syn,
            x_real,
            centered_one_hot(self.y_train[idx], self.num_classes),
            bool(cfg.use_flip),
            cfg.krr_reg,
            cfg.chunk_size,
            cfg.precision,
            cfg.support_precision,
            self.passes,
        )
        self.ctx.mean_([p.grad for p in self.syn.trainable()])
        metrics["grad_norm_x"] = self.syn.images.grad.norm()
        if self.syn.labels.requires_grad:
            metrics["grad_norm_y"] = self.syn.labels.grad.norm()
        with record_function("frepo/lamb"):
            self.lamb.update(*scalars)
        if online:
            with record_function("frepo/online"):
                images, labels = self.syn.images.detach(), self.syn.labels.detach()
                metrics["online_loss"] = self.pool.online_step(i, images, labels, subsample)
        return metrics

    def finite(self) -> bool:
        return bool(torch.isfinite(self.syn.images).all() and torch.isfinite(self.syn.labels).all())

    def learning_rate(self, step: int) -> float:
        """The LAMB learning rate of (0-based) outer step `step`."""
        return self.lamb.schedule(step)

    @property
    def pool_resets(self) -> int:
        """Pool models re-initialised so far."""
        return self.pool.resets

    def state_problems(self, state: dict) -> list[str]:
        """Why a checkpoint's `state` (with this trainer's keys) does not fit this trainer; empty if it does."""
        problems = []
        models = state["pool"].get("models") if isinstance(state["pool"], dict) else None
        if not isinstance(models, list) or len(models) != self.config.pool.num_models:
            count = len(models) if isinstance(models, list) else "no"
            problems.append(f"it holds {count} pool models, this run {self.config.pool.num_models}")
        synthetic = state["synthetic"] if isinstance(state["synthetic"], dict) else {}
        for name, tensor in (("images", self.syn.images), ("labels", self.syn.labels)):
            saved = synthetic.get(name)
            if not isinstance(saved, torch.Tensor) or saved.shape != tensor.shape:
                shape = tuple(saved.shape) if isinstance(saved, torch.Tensor) else None
                problems.append(f"its synthetic {name} are {shape}, this run's {tuple(tensor.shape)}")
        return problems

    def state_dict(self) -> dict:
        """The run's state. A per-rank pool differs by rank: every rank's pool is gathered (a collective:
        every rank calls this), and each rank takes its own back on load."""
        state = {
            "synthetic": self.syn.state_dict(),
            "lamb": self.lamb.state_dict(),
            "pool": self.pool.state_dict(),
            "sampler": self.sampler.state_dict(),
        }
        if self.per_rank_pool:
            state["pool_per_rank"] = self.ctx.gather_objects(state["pool"])
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.graphs is not None:  # the optimisers' loaded state lives at new addresses: capture anew
            self.graphs = StepGraphs(self._device_step, self.device)
        self.syn.load_state_dict(state["synthetic"])
        self.lamb.load_state_dict(state["lamb"])
        if self.per_rank_pool:
            pools = state.get("pool_per_rank")
            if not isinstance(pools, list) or len(pools) != self.ctx.world:
                # said as what to do: "delete it to restart the run" (a damaged checkpoint's advice) threw the run away
                count = len(pools) if isinstance(pools, list) else 0
                made = (
                    f"the pools of {count} process{'es' if count != 1 else ''}" if count else "one pool (one process)"
                )
                raise FrepoError(
                    f"the checkpoint holds {made}, and --pool-mode per-rank gives each process its own; this launch "
                    f"has {self.ctx.world}: resume with as many processes as the run was made with"
                )
            self.pool.load_state_dict(pools[self.ctx.rank])
        else:
            self.pool.load_state_dict(state["pool"])
        self.sampler.load_state_dict(state["sampler"])
