"""A second device on the CPU, `cpu:1`, that refuses what a GPU refuses: the device boundary without a GPU.

torch accepts `torch.device("cpu", 1)` and computes there on the CPU, so frepo's whole pipeline runs with
`--device cpu:1` on any machine. Within `SimulatedDevice()` (a `TorchFunctionMode`), tensors made there
(`device="cpu:1"`), moved there (`.to`), or computed from such tensors are "on the device": their
storages are recorded, and `.device` reports `cpu:1` for them. The mode then raises, as CUDA does, on

- an operation that mixes device and host tensors ("Expected all tensors to be on the same device"; a
  0-dim host tensor is accepted, as CUDA accepts CPU scalars; `copy_` and assignment into a slice may
  cross, as they do on a GPU, assignment through tensor indices may not);
- a host tensor indexed with device indices (the snapshot crash of issue 18: a device tensor may be
  indexed with host indices, not the other way round);
- `.numpy()` / `np.asarray` of a device tensor, and pinning device memory;
- a CPU generator drawing onto the device (`torch.randn(..., device=cuda, generator=cpu_gen)` fails);
- a gradient assigned across devices.

`.cpu()` and `.to("cpu")` return host copies. The host side is recorded too: a tensor the mode never
saw made (the autograd engine's, functorch's inside a transform, `torch.load`'s) is of unknown place and
judged only where it meets a parameter (`.grad` takes its parameter's place).

A read of a device tensor's value on the host (`.item()`, `.tolist()`, `bool`, `float`, `int`, an index, `.cpu()`,
`.to("cpu")`), which on a GPU waits for the stream, is counted in `reads` by frepo source line.
A host-to-device copy that may make the host wait for a GPU is counted in `waits` by frepo source line:
a blocking one (`.to` or `copy_` without non_blocking: it waits for the whole stream), and a non_blocking
one from pageable memory (the driver may wait for the stream to stage it). Page-locking cannot run
without CUDA, so the model takes frepo's word for the one place that pins on a GPU: a non_blocking copy
made inside `frepo.base.device` is not counted; tests/test_cuda.py checks on a GPU that it does pin.

What is not modelled: the speed and the asynchrony of a real GPU (synchronisations inside torch's own
kernels, such as a boolean mask's, are the CUDA tests' job), CUDA-only kernels, and `torch.load` of saved
device tensors (a real GPU reloads them on the GPU unless `map_location` says otherwise).
"""

from __future__ import annotations

import collections
import traceback
import weakref
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import frepo.base.device

DEVICE = torch.device("cpu", 1)
_FREPO = Path(frepo.__file__).parent  # frepo's own source lines name a copy
_PAGE_LOCKING = Path(frepo.base.device.__file__)  # the one place that pins before a queued copy
HOST = torch.device("cpu")

_DEVICE_GET = torch.Tensor.device.__get__
_GRAD_GET = torch.Tensor.grad.__get__
_GRAD_SET = torch.Tensor.grad.__set__
_DATA_SET = torch.Tensor.data.__set__
_TO_HOST = {torch.Tensor.cpu}
_NO_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}
# Reading a device tensor's value on the host: on a GPU each waits for the stream to finish the work queued so far.
_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
}
# A GPU copies across devices here; the last only compares two tensors' types (nn.Module.to asks it).
_CROSSING = {torch.Tensor.copy_, torch.Tensor.__setitem__, torch._has_compatible_shallow_copy_type}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put}


class DeviceMixError(RuntimeError):
    """What a GPU would have refused (the message names it as torch would on CUDA)."""


def _target(value) -> torch.device | None:
    """The device an explicit `device=` argument names (None when not given)."""
    if value is None:
        return None
    return torch.device(value) if not isinstance(value, torch.device) else value


class SimulatedDevice(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self._storages: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> storage, device
        self._host: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> storage, host
        self.placed = 0  # tensors placed on the device so far (a test can check the device was used)
        self.waits: collections.Counter = collections.Counter()  # host-to-device copies that may wait, by line
        self.reads: collections.Counter = collections.Counter()  # device values read on the host, by line

    # ---- which tensors are on the device -------------------------------------------------------
    def on_device(self, t: torch.Tensor) -> bool | None:
        """True on the device, False on the host, None when unknown (made out of the mode's sight)."""
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return None
        if self._storages.get(id(storage)) is storage:
            return True
        return False if self._host.get(id(storage)) is storage else None

    def _place(self, out, on_device: bool) -> None:
        """Record where the tensors of `out` are."""
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                try:
                    storage = t.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                (self._storages if on_device else self._host)[id(storage)] = storage
                (self._host if on_device else self._storages).pop(id(storage), None)
                self.placed += on_device

    # ---- the mode ------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_GET:
            return DEVICE if self.on_device(args[0]) else func(*args)
        if func in _READS and self.on_device(args[0]):
            self.reads[_frepo_line()] += 1
        if func in _TO_HOST:
            if self.on_device(args[0]):
                self.reads[_frepo_line()] += 1
            return self._to(args[0], HOST, func, args, kwargs)
        if func is torch.Tensor.to:
            target = self._to_target(args, kwargs)
            if target == DEVICE and self.on_device(args[0]) is False:
                self._count_wait(self._non_blocking(args, kwargs))
            if target == HOST and self.on_device(args[0]):
                self.reads[_frepo_line()] += 1
            return self._to(args[0], target, func, args, kwargs)
        if func is torch.Tensor.copy_ and self.on_device(args[0]) and self.on_device(args[1]) is False:
            self._count_wait(kwargs.get("non_blocking", args[2] if len(args) > 2 else False))
        if func in _NO_NUMPY and self.on_device(args[0]):
            raise DeviceMixError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
                "memory first. (simulated device)"
            )
        if func is torch.Tensor.pin_memory and self.on_device(args[0]):
            raise DeviceMixError("cannot pin 'torch.cuda.FloatTensor' only dense CPU tensors can be pinned (simulated)")
        if func == _DATA_SET:
            return func(*args, **kwargs)  # the parameter takes the new storage, and with it its device
        if func == _GRAD_SET:
            param, grad = args
            if grad is not None and self.on_device(param) is not None and self.on_device(grad) is not None:
                if self.on_device(param) != self.on_device(grad):
                    raise DeviceMixError("assigned grad has data located on a different device (simulated)")
            return func(*args, **kwargs)
        if func == _GRAD_GET:  # gradients come from the autograd engine, past this mode
            out = func(*args, **kwargs)
            if self.on_device(args[0]) is not None:
                self._place(out, bool(self.on_device(args[0])))
            return out
        if func is torch.autograd.grad:
            out = func(*args, **kwargs)
            inputs = kwargs.get("inputs", args[1] if len(args) > 1 else None)
            inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
            for g, x in zip(out, inputs):
                if self.on_device(x) is not None:
                    self._place(g, bool(self.on_device(x)))
            return out

        self._check_generator(func, args, kwargs)
        explicit = _target(kwargs.get("device"))
        inputs = self._check_mixing(func, args, kwargs)
        out = func(*args, **kwargs)
        if explicit is not None:
            self._place(out, explicit == DEVICE)
        elif inputs is not None and not _in_place(func):
            self._place(out, inputs)
        return out

    def _to_target(self, args, kwargs) -> torch.device | None:
        rest = args[1:]
        other = rest[0] if rest and isinstance(rest[0], torch.Tensor) else kwargs.get("other")
        if isinstance(other, torch.Tensor):
            return DEVICE if self.on_device(other) else HOST
        parsed = {k: v for k, v in kwargs.items() if k != "copy"}  # the parser knows no `copy`
        return torch._C._nn._parse_to(*rest, **parsed)[0]

    @staticmethod
    def _non_blocking(args, kwargs) -> bool:
        rest = args[1:]
        if rest and isinstance(rest[0], torch.Tensor):  # .to(other, non_blocking=False, copy=False)
            return bool(kwargs.get("non_blocking", rest[1] if len(rest) > 1 else False))
        parsed = {k: v for k, v in kwargs.items() if k != "copy"}
        return bool(torch._C._nn._parse_to(*rest, **parsed)[2])

    def _count_wait(self, non_blocking: bool) -> None:
        """Count a host-to-device copy unless it is queued from page-locked memory (`host_to_device`)."""
        frames = _frepo_frames()
        if non_blocking and frames and Path(frames[-1].filename) == _PAGE_LOCKING:
            return
        self.waits[_frepo_line()] += 1

    def _to(self, t: torch.Tensor, target: torch.device | None, func, args, kwargs):
        source = self.on_device(t)
        out = func(*args, **kwargs)
        if target is None:  # a dtype or layout change stays where it is
            if source is not None:
                self._place(out, source)
            return out
        if target.type != "cpu":
            return out  # a real accelerator: not simulated
        to_device = target == DEVICE
        if bool(source) != to_device and isinstance(out, torch.Tensor):
            if out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
                out = out.clone()  # a GPU copies across devices; the CPU would alias
        self._place(out, to_device)
        return out

    def _check_generator(self, func, args, kwargs) -> None:
        gen = kwargs.get("generator")
        if not isinstance(gen, torch.Generator) or gen.device.type != "cpu":
            return
        target = _target(kwargs.get("device"))
        onto_device = (
            target == DEVICE
            if target is not None
            else (
                bool(args) and isinstance(args[0], torch.Tensor) and _in_place(func) and bool(self.on_device(args[0]))
            )
        )
        if onto_device:
            raise DeviceMixError(
                f"Expected a 'cuda' device type for generator but found 'cpu' (simulated, {_name(func)})"
            )

    def _check_mixing(self, func, args, kwargs) -> bool | None:
        """Where the outputs are (True: the device, False: the host, None: unknown, as all the inputs are);
        raises where a GPU would refuse the mix of inputs."""
        if func in _INDEXING:
            self._check_indexing(func, args)
            return self.on_device(args[0])
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        places = [(self.on_device(t), t) for t in tensors]
        device = [t for place, t in places if place]
        host = [t for place, t in places if place is False and t.dim() > 0]
        if device and host and func not in _CROSSING:
            raise DeviceMixError(
                "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
                f"(simulated, in {_name(func)}: {len(device)} device and {len(host)} host tensors)"
            )
        if device:
            return True
        if not tensors or any(place is False for place, _ in places):
            return False  # made on the host (a factory with no device), or from host tensors
        return None

    def _check_indexing(self, func, args) -> None:
        base, index = args[0], args[1] if len(args) > 1 else None
        tensor_index = any(isinstance(t, torch.Tensor) for t in tree_flatten(index)[0])
        value = args[2] if func is torch.Tensor.__setitem__ and len(args) > 2 else None
        if tensor_index and isinstance(value, torch.Tensor) and value.dim() > 0:  # index_put_, not copy_
            places = self.on_device(base), self.on_device(value)
            if None not in places and places[0] != places[1]:
                raise DeviceMixError(
                    "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and "
                    f"cpu! (simulated, assignment through tensor indices, {_name(func)})"
                )
        if self.on_device(base) is not False:
            return  # a device tensor takes host or device indices (and an unknown one is not judged)
        for t in tree_flatten(index)[0]:
            if isinstance(t, torch.Tensor) and self.on_device(t):
                raise DeviceMixError(
                    "indices should be either on cpu or on the same device as the indexed tensor (cpu) "
                    f"(simulated, {_name(func)})"
                )


def _frepo_frames() -> list:
    return [f for f in traceback.extract_stack() if Path(f.filename).is_relative_to(_FREPO)]


def _frepo_line() -> str:
    """The frepo source line the call comes from ("trainer.py:312"; "?" from outside frepo)."""
    frames = _frepo_frames()
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def _in_place(func) -> bool:
    name = getattr(func, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
