"""The wire between the grader (trusted) and the sandboxed worker (untrusted).

Both directions use length-prefixed frames on a pipe.

* Grader -> worker: pickle. Only the trusted side writes these, and the worker is the
  student's process anyway, so nothing is lost by letting it unpickle.
* Worker -> grader: :func:`pack` / :func:`unpack`, a JSON tree plus raw byte blobs. The grader
  never unpickles anything the worker sends; :func:`unpack` only ever builds plain values
  (None, bool, int, float, complex, str, bytes, tuple, list, dict, set, dense CPU tensors and
  numpy arrays of whitelisted dtypes, dtypes, devices, sizes, slices) and *handles*: opaque
  numbers that stand for objects living in the worker. Whatever the student's code does to its
  own process, the worst it can send is a wrong value or a malformed message.

This module is copied into the sandbox next to the worker: it imports only the standard
library and torch (numpy lazily), never the rest of the grader.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time

MAX_FRAME = 256 * 1024 * 1024  # bytes; a larger message is a protocol violation
# Bytes of a message's JSON tree. Tensors travel as blobs, so a genuine tree is small; this
# bounds what json.loads may build (tens of bytes of Python objects per byte) before any
# node is counted.
MAX_TREE = 8 * 1024 * 1024
MAX_NODES = 1_000_000  # values in one message
MAX_DEPTH = 64  # nesting of containers
HEADER = struct.Struct(">Q")

TORCH_DTYPES = (
    "bool uint8 int8 int16 int32 int64 float16 bfloat16 float32 float64 complex64 complex128"
).split()
NUMPY_DTYPES = frozenset(
    "|b1 |u1 |i1 <u2 <i2 <u4 <i4 <u8 <i8 <f2 <f4 <f8 <c8 <c16 >u2 >i2 >u4 >i4 >u8 >i8 "
    ">f2 >f4 >f8 >c8 >c16".split()
)


class ProtocolError(Exception):
    """The other side sent something that is not a well-formed message."""


class PeerGone(BaseException):
    """The other side closed the pipe or did not answer before the deadline.

    A BaseException, so that check code catching ``Exception`` around a call into student code
    cannot swallow it: the grader must notice that the worker is gone.
    """

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


# ----------------------------------------------------------------------------- frames


def write_frame(fd: int, payload: bytes, deadline: float | None = None) -> None:
    """Write one frame to ``fd`` (non-blocking aware: gives up at ``deadline``)."""
    data = memoryview(HEADER.pack(len(payload)) + payload)
    while data:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerGone("timed out writing to the other side", timed_out=True)
            _, writable, _ = select.select([], [fd], [], left)
            if not writable:
                continue
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            continue
        except (BrokenPipeError, OSError) as error:
            raise PeerGone(f"the pipe closed ({error})") from None
        data = data[n:]


def read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerGone("no answer before the time limit", timed_out=True)
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
        try:
            chunk = os.read(fd, min(n - got, 1 << 20))
        except BlockingIOError:
            continue
        except OSError as error:
            raise PeerGone(f"the pipe closed ({error})") from None
        if not chunk:
            raise PeerGone("the other side closed the pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None, limit: int = MAX_FRAME) -> bytes:
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size, deadline))
    if size > limit:
        raise ProtocolError(f"a message of {size} bytes is over the limit of {limit}")
    return read_exact(fd, size, deadline)


# --------------------------------------------------------------------- worker -> grader


def pack(tree, blobs: list[bytes]) -> bytes:
    """Serialise a JSON-able ``tree`` (built by the worker's encoder) and its byte blobs."""
    text = json.dumps(tree, separators=(",", ":"), allow_nan=True).encode()
    parts = [HEADER.pack(len(text)), text, HEADER.pack(len(blobs))]
    for blob in blobs:
        parts += [HEADER.pack(len(blob)), blob]
    return b"".join(parts)


def unpack(payload: bytes):
    """Split a frame into its JSON tree and blobs; nothing is interpreted yet."""
    try:
        view = memoryview(payload)
        (n,) = HEADER.unpack(view[:8])
        if n > MAX_TREE:
            raise ProtocolError(f"a message tree of {n} bytes is over the limit of {MAX_TREE}")
        tree = json.loads(bytes(view[8 : 8 + n]))
        pos = 8 + n
        (count,) = HEADER.unpack(view[pos : pos + 8])
        pos += 8
        blobs = []
        for _ in range(count):
            (size,) = HEADER.unpack(view[pos : pos + 8])
            pos += 8
            if pos + size > len(view):
                raise ProtocolError("a blob runs past the end of the message")
            blobs.append(view[pos : pos + size])
            pos += size
        if pos != len(view):
            raise ProtocolError("trailing bytes after the last blob")
        return tree, blobs
    except ProtocolError:
        raise
    except (ValueError, RecursionError, struct.error, UnicodeDecodeError) as error:
        raise ProtocolError(f"malformed message: {error}") from None


class Decoder:
    """Turn a tree from :func:`unpack` into plain values; handles become ``make_handle(node)``.

    Every node is validated: unknown tags, wrong types, inconsistent tensor sizes, excessive
    nesting or node counts raise :class:`ProtocolError`. ``grad_tensors`` collects, in order,
    the decoded tensors the worker marked as part of an autograd graph (``"gi"``).
    """

    def __init__(self, blobs, make_handle):
        self.blobs = blobs
        self.make_handle = make_handle
        self.nodes = 0
        self.grad_tensors: dict[int, object] = {}

    def decode(self, node, depth: int = 0):
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise ProtocolError("message too large or too deeply nested")
        if node is None or isinstance(node, (bool, int, str)):
            return node
        if isinstance(node, float):
            return node
        if not isinstance(node, dict) or not isinstance(node.get("$"), str):
            raise ProtocolError(f"unexpected node {type(node).__name__}")
        tag = node["$"]
        method = getattr(self, "_" + tag, None) if tag.isidentifier() else None
        if method is None:
            raise ProtocolError(f"unknown tag {tag!r}")
        return method(node, depth + 1)

    def _items(self, node, depth):
        items = node.get("v")
        if not isinstance(items, list):
            raise ProtocolError("container without a list of items")
        return [self.decode(item, depth) for item in items]

    def _list(self, node, depth):
        return self._items(node, depth)

    def _tuple(self, node, depth):
        return tuple(self._items(node, depth))

    def _set(self, node, depth):
        return set(self._hashable(self._items(node, depth)))

    def _frozenset(self, node, depth):
        return frozenset(self._hashable(self._items(node, depth)))

    @staticmethod
    def _hashable(values):
        for value in values:
            if not _plain_hashable(value):
                raise ProtocolError("an unhashable set member or dict key")
        return values

    def _dict(self, node, depth):
        pairs = node.get("v")
        if not isinstance(pairs, list):
            raise ProtocolError("dict without items")
        out = {}
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ProtocolError("malformed dict item")
            key = self.decode(pair[0], depth)
            self._hashable([key])
            out[key] = self.decode(pair[1], depth)
        return out

    def _complex(self, node, depth):
        re, im = _numbers(node.get("v"), 2)
        return complex(re, im)

    def _ellipsis(self, node, depth):
        return Ellipsis

    def _slice(self, node, depth):
        parts = node.get("v")
        if not isinstance(parts, list) or len(parts) != 3:
            raise ProtocolError("malformed slice")
        for part in parts:
            if part is not None and not isinstance(part, int):
                raise ProtocolError("slice bounds must be ints or None")
        return slice(*parts)

    def _bytes(self, node, depth):
        return bytes(self._blob(node))

    def _blob(self, node):
        index = node.get("b")
        if not isinstance(index, int) or not 0 <= index < len(self.blobs):
            raise ProtocolError("bad blob index")
        return self.blobs[index]

    def _dtype(self, node, depth):
        import torch

        return _torch_dtype(torch, node.get("v"))

    def _device(self, node, depth):
        import torch

        name = node.get("v")
        if name not in ("cpu", "meta"):
            raise ProtocolError(f"unexpected device {name!r}")
        return torch.device(name)

    def _size(self, node, depth):
        import torch

        return torch.Size(_shape(node.get("v")))

    def _tensor(self, node, depth):
        import torch

        dtype = _torch_dtype(torch, node.get("dtype"))
        shape = _shape(node.get("shape"))
        blob = self._blob(node)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if math.prod(shape) * itemsize != len(blob):
            raise ProtocolError("tensor size does not match its data")
        if len(blob) == 0:
            tensor = torch.empty(shape, dtype=dtype)
        else:
            raw = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
            tensor = raw.view(dtype).reshape(shape)
        grad = node.get("grad", False) is True and (dtype.is_floating_point or dtype.is_complex)
        if node.get("param") is True:
            tensor = torch.nn.Parameter(tensor, requires_grad=grad)
        elif grad:
            tensor.requires_grad_(True)
        gi = node.get("gi")
        if gi is not None:
            if not isinstance(gi, int) or gi in self.grad_tensors or not grad:
                raise ProtocolError("bad autograd output index")
            self.grad_tensors[gi] = tensor
        return tensor

    def _ndarray(self, node, depth):
        import numpy as np

        dtype = node.get("dtype")
        if dtype not in NUMPY_DTYPES:
            raise ProtocolError(f"unexpected numpy dtype {dtype!r}")
        shape = _shape(node.get("shape"))
        blob = self._blob(node)
        dt = np.dtype(dtype)
        if math.prod(shape) * dt.itemsize != len(blob):
            raise ProtocolError("array size does not match its data")
        array = np.frombuffer(bytes(blob), dtype=dt).reshape(shape).copy()
        if node.get("scalar") is True:
            if shape != ():
                raise ProtocolError("a numpy scalar must have shape ()")
            return array[()]
        return array

    def _structseq(self, node, depth):
        import torch

        name = node.get("type")
        values = self._items(node, depth)
        public = isinstance(name, str) and name.isidentifier() and not name.startswith("_")
        kind = getattr(torch.return_types, name, None) if public else None
        if not (isinstance(kind, type) and issubclass(kind, tuple)):
            return tuple(values)
        try:
            return kind(values)
        except (TypeError, ValueError):
            return tuple(values)

    def _module(self, node, depth):
        name = node.get("name")
        if not isinstance(name, str) or len(name) > 200:
            raise ProtocolError("bad module name")
        return ModuleRef(name, self.make_handle(node) if "id" in node else None)

    def _handle(self, node, depth):
        if not isinstance(node.get("id"), int):
            raise ProtocolError("a handle needs an integer id")
        return self.make_handle(node)


class ModuleRef:
    """A module object in the worker, by name (and a handle, to reach it remotely)."""

    def __init__(self, name: str, handle):
        self.name = name
        self.handle = handle


def _plain_hashable(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_plain_hashable(v) for v in value)
    return False


def _numbers(values, n):
    if not isinstance(values, list) or len(values) != n:
        raise ProtocolError("malformed numbers")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError("malformed numbers")
    return values


def _shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > 32:
        raise ProtocolError("malformed shape")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < 2**40:
            raise ProtocolError("malformed shape")
    return tuple(shape)


def _torch_dtype(torch, name):
    if name not in TORCH_DTYPES:
        raise ProtocolError(f"unexpected dtype {name!r}")
    return getattr(torch, name)


# ------------------------------------------------------------------ shared conventions


def walk_tensors(tree, is_opaque, limit: int = 10_000) -> list:
    """Every tensor inside ``tree`` (containers, and the attributes of plain objects), in a
    fixed depth-first order, each once.

    Both sides run this on their copy of a call's arguments, so "the i-th tensor" names the
    same tensor on both: that is how in-place changes and gradients are matched up.
    ``is_opaque(obj)`` says which objects stand for the other side's objects (proxies) and
    must not be entered.
    """
    import torch

    found: list = []
    seen: set[int] = set()

    def visit(obj, depth):
        if len(found) >= limit or depth > 8 or id(obj) in seen:
            return
        if isinstance(obj, torch.Tensor):
            seen.add(id(obj))
            found.append(obj)
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, type)):
            return
        if is_opaque(obj) or callable(obj) and not isinstance(obj, torch.nn.Module):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
        elif isinstance(obj, dict):
            for item in list(obj.values()):
                visit(item, depth + 1)
        else:
            attributes = getattr(obj, "__dict__", None)
            if isinstance(attributes, dict) and type(obj).__module__ != "builtins":
                for item in list(attributes.values()):
                    visit(item, depth + 1)

    visit(tree, 0)
    return found
