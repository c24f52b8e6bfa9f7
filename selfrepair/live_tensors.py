"""Peak live tensor bytes of a computation: a deterministic measure of memory (issue 38).

A process's resident set moved by tens of MiB between identical runs (glibc's heap keeps freed
blocks, and a sampled peak misses short ones), so it cannot show a change of a few MiB, nor say
what held the memory. LiveTensors instead sees every tensor storage an aten operation makes
inside it (a TorchDispatchMode, so factories, views and in-place operations alike), follows
each until it is freed (a finalizer on the storage, whose Python object lives exactly as long
as the storage), and keeps the running maximum of the bytes alive, with what was alive then:
the same operations on the same shapes give the same number on every run.

Storages made before it (the model's weights) are not counted; a weight cache built inside is.
Not seen: buffers a kernel allocates and frees within one operation, and memory outside torch
(numpy outputs, the allocator's own slack).

    with LiveTensors() as live:
        measure_heads(model, tokens)
    live.peak, live.at_peak   # bytes, and [Allocation] alive then, largest first
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["Allocation", "LiveTensors", "describe", "tensor_bytes"]

# Frames of these files are the stack an allocation is recorded with; torch's and
# TransformerLens' own frames say little about which of the engine's tensors it is.
OWN_FILES = ("selfrepair", "benchmarks", "tests")


@dataclass(frozen=True)
class Allocation:
    """One storage made inside: its bytes, the first tensor's shape and dtype, the operation,
    and the innermost frames of this project's code that called it (file:line function)."""

    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    op: str
    stack: tuple[str, ...]


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages under tensors (e.g. model.parameters())."""
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def own_frames(depth: int) -> tuple[str, ...]:
    """The innermost `depth` frames of this project's files, innermost first."""
    out, frame = [], sys._getframe(1)
    while frame is not None and len(out) < depth:
        name = frame.f_code.co_filename
        if name != __file__ and any(f"/{part}/" in name for part in OWN_FILES):
            short = name.rsplit("/", 2)
            out.append(f"{'/'.join(short[-2:])}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return tuple(out)


class LiveTensors(TorchDispatchMode):
    """Bytes of the tensor storages made inside and still alive: now, at most (peak), and which
    they were at the peak (at_peak, largest first). depth: frames kept per allocation."""

    def __init__(self, depth: int = 4):
        super().__init__()
        self.depth = depth
        self.live: dict[int, Allocation] = {}
        self.bytes = self.peak = 0
        self.at_peak: list[Allocation] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t, inputs, func)
        return out

    def track(self, t: torch.Tensor, inputs: set[int], func) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        known = self.live.get(key)
        if known is not None:  # an out= or in-place operation may have resized it
            if storage.nbytes() != known.nbytes:
                self.add(key, Allocation(storage.nbytes(), *vars_of(known)), known.nbytes)
            return
        if key in inputs:  # a view of an input, or the input itself
            return
        alloc = Allocation(
            storage.nbytes(), tuple(t.shape), t.dtype, str(func), own_frames(self.depth)
        )
        self.add(key, alloc, 0)
        weakref.finalize(storage, self.free, key)

    def add(self, key: int, alloc: Allocation, before: int) -> None:
        self.live[key] = alloc
        self.bytes += alloc.nbytes - before
        if self.bytes > self.peak:
            self.peak = self.bytes
            self.at_peak = list(self.live.values())

    def free(self, key: int) -> None:
        alloc = self.live.pop(key, None)
        if alloc is not None:
            self.bytes -= alloc.nbytes

    def __exit__(self, *exc):
        self.at_peak.sort(key=lambda a: -a.nbytes)
        return super().__exit__(*exc)


def vars_of(a: Allocation) -> tuple:
    return a.shape, a.dtype, a.op, a.stack


def describe(allocs: list[Allocation], top: int = 12) -> list[str]:
    """One line per group of allocations alike (shape, dtype, where made), largest total first:
    'MiB total = count x shape dtype  op  innermost frame <- its caller ...'."""
    groups: dict[tuple, list[Allocation]] = {}
    for a in allocs:
        groups.setdefault((a.shape, a.dtype, a.op, a.stack), []).append(a)
    rows = sorted(groups.items(), key=lambda kv: -sum(a.nbytes for a in kv[1]))
    lines = []
    for (shape, dtype, op, stack), group in rows[:top]:
        total = sum(a.nbytes for a in group) / 2**20
        dims = "x".join(map(str, shape)) or "scalar"
        where = " <- ".join(stack) or "(outside this project's code)"
        lines.append(f"{total:8.2f} MiB = {len(group)} x [{dims}] {str(dtype)[6:]}  {op}  {where}")
    rest = rows[top:]
    if rest:
        mib = sum(a.nbytes for _, g in rest for a in g) / 2**20
        lines.append(f"{mib:8.2f} MiB in {sum(len(g) for _, g in rest)} more allocations")
    return lines
