"""A CUDA device emulated on the CPU, strict about devices as CUDA is, for machines without a GPU.

``with emulated_cuda():`` makes ``device="cuda"`` work on a CPU-only torch: factories and
``.to("cuda")`` give ``EmulatedCuda`` tensors, which report ``cuda:0`` and compute on real CPU data,
so data-dependent code (``.item()``, boolean-mask indexing, ``float(t)``) runs, unlike under
``FakeTensorMode``. Every operator refuses what CUDA refuses:

- tensors of two devices in one op ("Expected all tensors to be on the same device"), except CPU
  0-dim tensors (CUDA takes them as scalars), ``copy_`` and ``.to`` (the hand-overs), and CPU index
  tensors into a CUDA tensor;
- ``.numpy()`` (and so ``np.asarray``) of a CUDA tensor.

``torch.cuda.synchronize`` is a no-op inside, and ``torch.cuda.is_available()`` is True.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda", 0)
# Ops that take tensors of two devices on CUDA too.
_CROSS_DEVICE = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
             torch.ops.aten._index_put_impl_.default}


# Composite ops that pick a kernel by device and allocate on it before any dispatch reaches Python
# (SDPA's flash kernels): run on the CPU data as a whole.
_DEVICE_SELECTING = {torch.nn.functional.scaled_dot_product_attention}


_NEEDS_CPU_RUN: set = set()


class DeviceMismatch(RuntimeError):
    pass


class EmulatedCuda(torch.Tensor):
    """A tensor that says it is on ``cuda:0`` and holds its values in a CPU tensor (``.data_cpu``)."""

    data_cpu: torch.Tensor

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        if isinstance(data, torch.nn.Parameter):
            data = data.detach()
        assert type(data) is torch.Tensor and data.device.type == "cpu", type(data)
        out = torch.Tensor._make_wrapper_subclass(
            cls, data.shape, strides=data.stride(), storage_offset=data.storage_offset(), dtype=data.dtype,
            device=CUDA, requires_grad=False, layout=data.layout)
        out.data_cpu = data
        return out

    # A traceable wrapper: nn.Module.to() then swaps parameters for it instead of copying the
    # wrapper's bare metadata into them (which would lose the emulation).
    def __tensor_flatten__(self):
        return ["data_cpu"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return EmulatedCuda(inner["data_cpu"])

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"EmulatedCuda({self.data_cpu!r})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        _check_devices(func, args, kwargs)
        target = kwargs.get("device")
        if target is not None:
            target = torch.device(target)
            kwargs["device"] = torch.device("cpu")
        unwrapped_args = tree_map(_unwrap, args)
        out = func(*unwrapped_args, **tree_map(_unwrap, kwargs))
        schema_returns = func._schema.returns
        if schema_returns and schema_returns[0].alias_info is not None and schema_returns[0].alias_info.is_write:
            return args[0]  # in place: the same tensor object, as torch returns
        on_cuda = target.type == "cuda" if target is not None else _any_emulated((args, kwargs))
        return tree_map(_wrap, out) if on_cuda else out


def tree_map(fn, value):
    """``fn`` over the leaves of tuples, lists and dicts (all an operator's arguments hold); torch's
    pytree does the same at several times the cost, which dominated the emulation's overhead."""
    if isinstance(value, torch.Size):  # shapes hold no tensors
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: tree_map(fn, v) for k, v in value.items()}
    return fn(value)


def tree_flatten(value) -> tuple[list, None]:
    leaves: list = []

    def visit(item):
        if isinstance(item, torch.Size):
            return
        if isinstance(item, (tuple, list)):
            for v in item:
                visit(v)
        elif isinstance(item, dict):
            for v in item.values():
                visit(v)
        else:
            leaves.append(item)

    visit(value)
    return leaves, None


def _unwrap(value):
    return value.data_cpu if isinstance(value, EmulatedCuda) else value


def _wrap(value):
    return EmulatedCuda(value) if type(value) is torch.Tensor else value


def _any_emulated(tree) -> bool:
    return any(isinstance(x, EmulatedCuda) for x in tree_flatten(tree)[0])


def _check_devices(func, args, kwargs) -> None:
    if func in _CROSS_DEVICE:
        return
    tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
    if not any(isinstance(x, EmulatedCuda) for x in tensors):
        return
    if func in _INDEXING and isinstance(args[0], EmulatedCuda):
        tensors = [args[0]] + [x for x in tree_flatten((args[2:], kwargs))[0] if isinstance(x, torch.Tensor)]
    cpu = [x for x in tensors if not isinstance(x, EmulatedCuda) and x.dim() > 0]
    if cpu:
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
            f"({func}: a CPU tensor of shape {tuple(cpu[0].shape)})")


def _check_index(tensor, index) -> None:
    indices = [x for x in tree_flatten(index)[0] if isinstance(x, torch.Tensor)]
    if not isinstance(tensor, EmulatedCuda) and any(isinstance(x, EmulatedCuda) for x in indices):
        raise DeviceMismatch("indices should be either on cpu or on the same device as the indexed tensor (cpu)")


def _advanced(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(x, (torch.Tensor, list)) for x in items)


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class _Factories(TorchFunctionMode):
    """Routes ``device="cuda"`` factories and ``.to``/``.cuda``/``.cpu``/``.numpy`` through the emulation."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return _move(func, args, kwargs)
        if func is torch.Tensor.numpy and isinstance(args[0], EmulatedCuda):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        if func is torch.Tensor.tolist and isinstance(args[0], EmulatedCuda):
            return args[0].data_cpu.tolist()
        # Indexing sets a device guard in C++ before any dispatch, which a CPU-only torch cannot do
        # for cuda: index the CPU data here, with CUDA's rules.
        if func is torch.Tensor.__getitem__ and _any_emulated(args):
            tensor, index = args
            _check_index(tensor, index)
            return _wrap(tensor.data_cpu[tree_map(_unwrap, index)])
        if func is torch.Tensor.__setitem__ and _any_emulated(args):
            tensor, index, value = args
            _check_index(tensor, index)
            if isinstance(value, torch.Tensor) and not isinstance(value, EmulatedCuda) and value.dim() > 0 \
                    and _advanced(index):
                raise DeviceMismatch("Expected all tensors to be on the same device, but found at least two devices, "
                                     "cuda:0 and cpu! (index_put_ of CPU values into a CUDA tensor)")
            tensor_cpu = tensor.data_cpu if isinstance(tensor, EmulatedCuda) else tensor
            tensor_cpu[tree_map(_unwrap, index)] = _unwrap(value)
            return None
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
            return tree_map(_wrap, func(*args, **kwargs))
        if func is torch.Tensor.copy_ and _any_emulated(args):  # a hand-over: any two devices
            destination, source = args[0], args[1]
            _unwrap(destination).copy_(_unwrap(source), *args[2:], **kwargs)
            return destination
        if not _any_emulated((args, kwargs)):
            return func(*args, **kwargs)
        if func not in _NEEDS_CPU_RUN:
            try:
                return func(*args, **kwargs)  # operators check devices in __torch_dispatch__
            except (NotImplementedError, RuntimeError) as error:
                # Some bindings allocate on the device or set a device guard before any dispatch
                # reaches Python (scalars in torch.where, SDPA's kernel choice, linear, .item()),
                # which a CPU-only torch cannot do for cuda: check CUDA's rule here, then run on the
                # CPU data (and go straight there next time: the failed try is slow).
                if isinstance(error, DeviceMismatch) or ("CUDA" not in str(error) and "cuda" not in str(error)):
                    raise
                _NEEDS_CPU_RUN.add(func)
        _check_devices(func, args, kwargs)
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if args and isinstance(args[0], EmulatedCuda) and out is args[0].data_cpu:
            return args[0]  # an in-place method returns its tensor
        return tree_map(_wrap, out)


def _move(func, args, kwargs):
    tensor, rest = args[0], args[1:]
    if func is torch.Tensor.cpu:
        return tensor.data_cpu if isinstance(tensor, EmulatedCuda) else tensor
    if func is torch.Tensor.cuda:
        device, dtype, non_blocking = CUDA, None, False
    else:
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*rest, **kwargs)
        if isinstance(rest[0] if rest else None, torch.Tensor):  # .to(other): its device and dtype
            device, dtype = rest[0].device, rest[0].dtype
    data = tensor.data_cpu if isinstance(tensor, EmulatedCuda) else tensor
    moved = data.to(dtype=dtype) if dtype is not None else data
    if device is None:
        return tensor if moved is data else (EmulatedCuda(moved) if isinstance(tensor, EmulatedCuda) else moved)
    if torch.device(device).type == "cuda":
        return tensor if isinstance(tensor, EmulatedCuda) and moved is data else EmulatedCuda(moved)
    return moved


@contextlib.contextmanager
def emulated_cuda() -> Iterator[None]:
    """Inside, ``cuda`` is a device of this machine (see the module docstring)."""
    with mock.patch("torch.cuda.synchronize", lambda *a, **k: None), \
            mock.patch("torch.cuda.is_available", lambda: True), _Factories():
        yield
