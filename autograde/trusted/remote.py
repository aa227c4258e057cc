"""The grader's view of the student's objects: proxies that forward to the sandboxed worker.

When a check calls the student's ``softmax(scores)``, ``softmax`` here is a
:class:`RemoteObject`: calling it pickles the arguments to the worker, which runs the student's
function there and sends back the result as plain data (``wire``). The check then compares
that result, in this process, with its own oracle: student code never runs where verdicts are
made, so monkeypatching torch, numpy, builtins or the checks in the student's process changes
nothing here.

Semantics follow a single Python process as closely as the checks need:

* arguments the student's code modifies in place are modified here too (the checks test for
  that bug);
* a result that depends on an argument with ``requires_grad`` is differentiable here: its
  backward pass runs the student's autograd graph in the worker (:class:`_Bridge`);
* the global torch RNG state, grad mode and default dtype travel with every request, so the
  two processes behave as one for code that relies on them;
* functions a check passes to student code (``graded_alone`` references) run in the worker
  when the worker can import them (course_lib.checks, torch, ...), else here, as callbacks;
* objects that are not plain data stay in the worker and are reached through further proxies.
"""

from __future__ import annotations

import builtins
import functools
import io
import pickle
import re
import sys
import time
import types

import torch

from . import wire

# Top-level packages the sandbox cannot import: objects from them are passed by callback.
NOT_IN_SANDBOX = frozenset(
    {"hidden_checks", "autograde", "tools", "tests", "solutions", "__main__"}
)
# Dunder attributes a check may read through a proxy. Others (``__array_interface__``, ...)
# would let the student's object steer how this process reads memory, so they are refused.
ALLOWED_DUNDERS = frozenset(
    {"__globals__", "__name__", "__qualname__", "__doc__", "__module__", "__wrapped__"}
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.<>]{0,199}$")


class WorkerLost(BaseException):
    """The worker died, timed out or broke the protocol; the notebook's cell cannot finish.

    A BaseException so that a check's ``except Exception`` cannot mistake it for a failure of
    the student's function and carry on against a dead worker.
    """

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class RemoteError(Exception):
    """Base of the exceptions rebuilt from the student's code (see :func:`rebuild_error`)."""

    remote_traceback = ""


class RemoteObject:
    """An object that lives in the worker. Operations on it are requests to the worker."""

    __slots__ = ("_session", "_id", "_generation", "_callable")

    def __init__(self, session: Session, handle: int, is_callable: bool):
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_id", handle)
        object.__setattr__(self, "_generation", session.generation)
        object.__setattr__(self, "_callable", is_callable)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS:
            raise AttributeError(name)
        return self._session.op("getattr", self, (name,))

    def __setattr__(self, name: str, value) -> None:
        self._session.op("setattr", self, (name, value))

    def __delattr__(self, name: str) -> None:
        self._session.op("delattr", self, (name,))

    def __call__(self, *args, **kwargs):
        return self._session.call(self, args, kwargs)

    def __getitem__(self, key):
        return self._session.op("getitem", self, (key,))

    def __setitem__(self, key, value) -> None:
        self._session.op("setitem", self, (key, value))

    def __delitem__(self, key) -> None:
        self._session.op("delitem", self, (key,))

    def __contains__(self, item) -> bool:
        return _expect_type(self._session.op("contains", self, (item,)), bool)

    def __len__(self) -> int:
        n = _expect_type(self._session.op("len", self, ()), int)
        if n < 0:
            raise ValueError("__len__() should return >= 0")
        return n

    def __bool__(self) -> bool:
        return _expect_type(self._session.op("bool", self, ()), bool)

    def __iter__(self):
        iterator = self._session.op("iter", self, ())
        while True:
            try:
                yield self._session.op("next", iterator, ())
            except StopIteration:
                return

    def __float__(self) -> float:
        return _expect_type(self._session.op("float", self, ()), float)

    def __int__(self) -> int:
        return _expect_type(self._session.op("int", self, ()), int)

    def __index__(self) -> int:
        return _expect_type(self._session.op("index", self, ()), int)

    def __repr__(self) -> str:
        try:
            return _expect_type(self._session.op("repr", self, ()), str)
        except Exception:  # noqa: BLE001 - a broken __repr__ of the student's is still a repr
            return f"<{type(self).__name__} object>"

    def __str__(self) -> str:
        return _expect_type(self._session.op("str", self, ()), str)

    def __reduce__(self):
        raise TypeError("a remote object cannot be pickled")


def _expect_type(value, kind):
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, the student's object gave {type(value)}")
    return value


def rebuild_error(info) -> BaseException:
    """An exception of the same name and message as the student's, derived from the nearest
    builtin exception class (so ``except ValueError`` still works), never anything that could
    run code here."""
    if not isinstance(info, dict):
        return RemoteError("the student's code raised an exception")
    name = info.get("type")
    name = name if isinstance(name, str) and name.isidentifier() else "Exception"
    message = info.get("message") if isinstance(info.get("message"), str) else ""
    base = Exception
    for candidate in info.get("bases") or []:
        kind = getattr(builtins, candidate, None) if isinstance(candidate, str) else None
        if isinstance(kind, type) and issubclass(kind, Exception) and kind is not Exception:
            base = kind
            break
    kind = _error_class(name, base)
    try:
        error = kind(message)
    except Exception:  # noqa: BLE001 - builtin exceptions with special constructors
        error = kind.__new__(kind)
        error.args = (message,)
    error._message = message
    tb = info.get("traceback")
    error.remote_traceback = tb if isinstance(tb, str) else ""
    return error


@functools.lru_cache(maxsize=512)
def _error_class(name: str, base: type) -> type:
    def __str__(self):
        return getattr(self, "_message", "")

    try:
        return type(name, (base, RemoteError), {"__str__": __str__, "__module__": "student"})
    except TypeError:  # a layout conflict: fall back to the plain base
        return type(name, (RemoteError,), {"__str__": __str__, "__module__": "student"})


class _BridgeInfo:
    def __init__(self, session: Session, gid: int, outs: list, n_inputs: int, anchor: bool):
        self.session, self.gid, self.outs = session, gid, outs
        self.n_inputs, self.anchor = n_inputs, anchor


class _Bridge(torch.autograd.Function):
    """Outputs computed in the worker, made differentiable with respect to our inputs."""

    @staticmethod
    def forward(ctx, info: _BridgeInfo, *inputs):
        ctx.info = info
        ctx.shapes = [(t.shape, t.dtype) for t in inputs]
        return tuple(o.detach().clone() for o in info.outs)

    @staticmethod
    def backward(ctx, *grads):
        info = ctx.info
        if info.anchor:
            info.session.backward(info.gid, list(grads), 0)
            return (None, None)
        values = info.session.backward(info.gid, list(grads), info.n_inputs)
        out = [None]
        for value, (shape, dtype) in zip(values, ctx.shapes, strict=True):
            if isinstance(value, torch.Tensor) and value.shape == shape:
                out.append(value.to(dtype))
            else:
                out.append(None)
        return tuple(out)


class Session:
    """Requests to one worker process; turns its replies into values and proxies."""

    def __init__(self, process, stubbed: frozenset[tuple[str, str]], generation: int):
        self.process = process
        self.stubbed = stubbed
        self.generation = generation
        self.deadline: float | None = None
        self.lost: WorkerLost | None = None
        self.proxies: dict[int, RemoteObject] = {}
        self.callbacks: dict[int, object] = {}
        self.classes: dict[str, type] = {}
        self.pending: BaseException | None = None  # a CheckFailed raised in a callback

    # ---------------------------------------------------------------- transport

    def _fail(self, reason: str, timed_out: bool = False) -> WorkerLost:
        if self.lost is None:
            if self.process.killed_for:  # the memory watchdog got there first
                reason = self.process.killed_for
            elif not timed_out and self.process.wait(2) is not None:
                reason = self.process.exit_description()
            self.lost = WorkerLost(reason, timed_out)
            self.process.kill(reason)
        return self.lost

    def send(self, message) -> None:
        if self.lost is not None:
            raise self.lost
        buffer = io.BytesIO()
        _Pickler(buffer, self).dump(message)
        try:
            wire.write_frame(self.process.cmd_w, buffer.getvalue(), self.deadline)
        except wire.PeerGone as gone:
            raise self._fail(self._reason(gone), gone.timed_out) from None

    def _reason(self, gone: wire.PeerGone) -> str:
        if gone.timed_out:
            return "timed out: the code did not finish within the time limit"
        return gone.reason

    def receive(self) -> tuple[dict, list]:
        """The next reply; callbacks the worker asks for on the way are served here."""
        while True:
            if self.lost is not None:
                raise self.lost
            try:
                frame = wire.read_frame(self.process.reply_r, self.deadline)
                tree, blobs = wire.unpack(frame)
            except wire.PeerGone as gone:
                raise self._fail(self._reason(gone), gone.timed_out) from None
            except wire.ProtocolError as error:
                raise self._fail(f"the worker broke the protocol: {error}") from None
            if not isinstance(tree, dict) or not isinstance(tree.get("kind"), str):
                raise self._fail("the worker broke the protocol: a reply without a kind")
            for key, stream in (("out", sys.stdout), ("err", sys.stderr)):
                text = tree.get(key)
                # Kept only inside a cell's capture (which tags and caps it); text arriving
                # at any other time is the student's alone and is dropped, never logged here.
                capture = getattr(stream, "write_worker", None)
                if isinstance(text, str) and text and capture is not None:
                    capture(text)
            if tree["kind"] == "callback":
                self._serve_callback(tree, blobs)
                continue
            if tree["kind"] not in ("ok", "error", "ready"):
                raise self._fail(f"the worker broke the protocol: kind {tree['kind']!r}")
            return tree, blobs

    def request(self, message) -> tuple[dict, list]:
        self.send(message)
        tree, blobs = self.receive()
        if tree["kind"] == "error":
            raise rebuild_error(tree.get("error"))
        return tree, blobs

    def decoder(self, blobs) -> wire.Decoder:
        return wire.Decoder(blobs, self._proxy)

    def decode(self, node, blobs):
        try:
            return self.decoder(blobs).decode(node)
        except wire.ProtocolError as error:
            raise self._fail(f"the worker broke the protocol: {error}") from None

    # ---------------------------------------------------------------- proxies

    def _proxy(self, node) -> RemoteObject:
        handle = node["id"]
        if handle in self.proxies:
            return self.proxies[handle]
        kind = node.get("type") if isinstance(node.get("type"), str) else "object"
        cls = self.classes.get(kind)
        if cls is None:
            module, _, name = kind.rpartition(".")
            if not _NAME.match(kind) or not name.isidentifier():
                module, name = "student", "object"
            cls = type(name, (RemoteObject,), {"__slots__": (), "__module__": module})
            self.classes[kind] = cls
        proxy = cls(self, handle, node.get("callable") is True)
        self.proxies[handle] = proxy
        return proxy

    def is_opaque(self, obj) -> bool:
        return isinstance(obj, RemoteObject) or self.by_callback(obj)

    def importable(self, module, qualname) -> bool:
        if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
            return False
        if module.split(".")[0] in NOT_IN_SANDBOX:
            return False
        return (module, qualname.split(".")[0]) not in self.stubbed

    def by_callback(self, obj) -> bool:
        """Whether ``obj`` goes to the worker as a callback (it runs here when called)."""
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, bytearray)):
            return False
        if isinstance(obj, (tuple, list, dict, set, frozenset, slice, torch.Tensor)):
            return False
        if isinstance(obj, (torch.dtype, torch.device, torch.Size)) or obj is Ellipsis:
            return False
        if isinstance(obj, type):
            return not self._resolves(obj)
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
            return not self._resolves(obj)
        if _is_check_object(obj):  # a stand-in that checks how it is used: it stays here
            return True
        if isinstance(obj, types.ModuleType) or callable(obj) and not _is_module(obj):
            return True
        kind = type(obj)
        return not self.importable(kind.__module__, kind.__qualname__)

    def _resolves(self, obj) -> bool:
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if not self.importable(module, qualname) or module not in sys.modules:
            return False
        target = sys.modules[module]
        for part in qualname.split("."):
            target = getattr(target, part, None)
        return target is obj

    def register_callback(self, obj) -> int:
        cid = len(self.callbacks) + 1
        self.callbacks[cid] = obj
        return cid

    def _serve_callback(self, tree, blobs) -> None:
        """Run what the worker asks of one of our objects: call it, or read an attribute.

        Attributes are served only for the check modules' own stand-ins, and only public ones:
        nothing the student asks for can walk from there to this process's modules. A
        ``CheckFailed`` raised here is remembered, and raised again when the student's call
        returns, even if the student's code caught it.
        """
        target = self.callbacks.get(tree.get("id"))
        try:
            if target is None:
                raise RuntimeError("this grader object is no longer available")
            if tree.get("op") == "getattr":
                name = tree.get("name")
                if not isinstance(name, str) or name.startswith("_"):
                    raise AttributeError(f"the grader's {type(target).__name__} has no {name!r}")
                if not _is_check_object(target):
                    raise AttributeError("only calling this grader object is supported")
                value = getattr(target, name)
            else:
                args = self.decode(tree.get("args"), blobs)
                if not (isinstance(args, tuple) and len(args) == 2 and isinstance(args[1], dict)):
                    raise self._fail("the worker broke the protocol: malformed callback")
                value = target(*args[0], **{str(k): v for k, v in args[1].items()})
        except WorkerLost:
            raise
        except Exception as error:  # noqa: BLE001 - goes back to the student's code
            if _is_check_failure(error) and self.pending is None:
                self.pending = error
            self.send(("cb_error", type(error).__name__, str(error)[:2000]))
            return
        self.send(("cb_return", value))

    def _raise_pending(self) -> None:
        if self.pending is not None:
            failure, self.pending = self.pending, None
            raise failure

    # ---------------------------------------------------------------- requests

    def context(self) -> dict:
        return {
            "grad": torch.is_grad_enabled(),
            "dtype": torch.get_default_dtype(),
            "rng": torch.get_rng_state(),
        }

    def _after(self, tree, blobs) -> None:
        node = tree.get("rng")
        if node is None:
            return
        state = self.decode(node, blobs)
        current = torch.get_rng_state()
        if isinstance(state, torch.Tensor) and state.dtype == torch.uint8:
            if state.shape == current.shape:
                try:
                    torch.set_rng_state(state)
                except RuntimeError:
                    pass

    def op(self, name: str, proxy: RemoteObject, args: tuple):
        self._check_generation(proxy)
        try:
            tree, blobs = self.request((name, proxy._id, args, self.context()))
        except RemoteError:
            self._raise_pending()
            raise
        self._raise_pending()
        self._after(tree, blobs)
        return self.decode(tree.get("value"), blobs)

    def call(self, proxy: RemoteObject, args: tuple, kwargs: dict):
        self._check_generation(proxy)
        tensors = wire.walk_tensors((args, kwargs), self.is_opaque)
        grad = torch.is_grad_enabled()
        try:
            tree, blobs = self.request(("call", proxy._id, (args, kwargs), self.context()))
        except RemoteError:
            self._raise_pending()
            raise
        self._raise_pending()
        self._after(tree, blobs)
        decoder = self.decoder(blobs)
        try:
            value = decoder.decode(tree.get("value"))
            mutated = tree.get("mutated") or []
            if not isinstance(mutated, list):
                raise wire.ProtocolError("malformed list of modified arguments")
            for item in mutated:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                    raise wire.ProtocolError("malformed modified argument")
                if 0 <= item[0] < len(tensors):
                    _assign(tensors[item[0]], decoder.decode(item[1]))
        except wire.ProtocolError as error:
            raise self._fail(f"the worker broke the protocol: {error}") from None
        gid = tree.get("graph")
        if gid is None or not grad or not decoder.grad_tensors:
            return value
        if not isinstance(gid, int) or sorted(decoder.grad_tensors) != list(
            range(len(decoder.grad_tensors))
        ):
            raise self._fail("the worker broke the protocol: malformed autograd outputs")
        outs = [decoder.grad_tensors[i] for i in range(len(decoder.grad_tensors))]
        inputs = [t for t in tensors if t.requires_grad]
        anchor = not inputs
        if anchor:
            inputs = [torch.zeros((), requires_grad=True)]
        info = _BridgeInfo(self, gid, outs, 0 if anchor else len(inputs), anchor)
        linked = _Bridge.apply(info, *inputs)
        return _substitute(value, {id(o): n for o, n in zip(outs, linked, strict=True)})

    def backward(self, gid: int, grads: list, n_inputs: int) -> list:
        tree, blobs = self.request(("backward", gid, grads))
        values = self.decode(tree.get("value"), blobs)
        if not isinstance(values, list) or len(values) != n_inputs and n_inputs:
            return [None] * n_inputs
        return values

    def _check_generation(self, proxy: RemoteObject) -> None:
        if proxy._session is not self or proxy._generation != self.generation:
            raise RemoteError("this object belonged to a worker that has been restarted")

    def resolve(self, names: list[str]) -> dict:
        tree, blobs = self.request(("resolve", names))
        values = tree.get("value")
        if not isinstance(values, dict):
            raise self._fail("the worker broke the protocol: malformed names")
        out = {}
        for name in names:
            node = values.get(name)
            if isinstance(node, dict) and node.get("$") == "missing":
                continue
            out[name] = self.decode(node, blobs)
        return out

    def exec_cell(self, source: str):
        """Run a cell of the student's; the error it raised (as a dict), if any."""
        tree, _ = self.request(("exec", source))
        error = tree.get("cell_error")
        return error if isinstance(error, dict) else None

    def rng_state(self):
        tree, blobs = self.request(("rng_get",))
        return self.decode(tree.get("value"), blobs)

    def set_rng_state(self, state) -> None:
        self.request(("rng_set", state))

    def release(self) -> None:
        self.request(("release",))
        self.callbacks.clear()

    def wait_ready(self) -> None:
        tree, _ = self.receive()
        if tree.get("kind") != "ready":
            raise self._fail("the worker did not start")

    def close(self) -> None:
        if self.lost is None and self.process.alive():
            try:
                self.deadline = time.monotonic() + 5
                self.send(("bye",))
            except WorkerLost:
                pass
        self.process.kill()


def _is_module(obj) -> bool:
    return isinstance(obj, torch.nn.Module)


CHECK_MODULES = ("course_lib.checks", "hidden_checks")


def _is_check_object(obj) -> bool:
    """An instance of a class of the checks (a stand-in model that checks how the student's
    code uses it, say), not a torch module: such objects stay with the judge."""
    module = getattr(type(obj), "__module__", "") or ""
    in_checks = any(module == m or module.startswith(m + ".") for m in CHECK_MODULES)
    plain_function = isinstance(obj, (types.FunctionType, types.MethodType, functools.partial))
    return in_checks and not isinstance(obj, (type, torch.nn.Module)) and not plain_function


def _is_check_failure(error: BaseException) -> bool:
    return any(
        k.__name__ == "CheckFailed" and k.__module__.startswith(CHECK_MODULES)
        for k in type(error).__mro__
    )


class ArgumentReshaped(RemoteError, ValueError):
    """The student's code changed the shape or dtype of an argument in place."""


def _assign(original, new) -> None:
    """Make ``original`` (our tensor) equal to ``new`` (its state after the student's call).

    Only values change here: a reply that would give our tensor another shape or dtype is
    refused (the check would otherwise go on with, and allocate for, a size of the worker's
    choosing), and the student's call fails instead.
    """
    if not isinstance(new, torch.Tensor) or not isinstance(original, torch.Tensor):
        return
    if new.shape != original.shape or new.dtype != original.dtype:
        raise ArgumentReshaped(
            "your code changed the shape or dtype of an argument in place; "
            "compute into new tensors instead"
        )
    with torch.no_grad():
        original.copy_(new)


def _substitute(value, mapping: dict[int, object]):
    if id(value) in mapping:
        return mapping[id(value)]
    if type(value) is tuple:
        return tuple(_substitute(v, mapping) for v in value)
    if type(value) is list:
        return [_substitute(v, mapping) for v in value]
    if type(value) is dict:
        return {k: _substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, tuple) and type(value).__module__ == "torch.return_types":
        return type(value)([_substitute(v, mapping) for v in value])
    return value


class _Pickler(pickle.Pickler):
    """Pickles requests for the worker: proxies by handle, tensors as raw data, and what the
    worker cannot import (or must not run itself) as callbacks."""

    def __init__(self, file, session: Session):
        super().__init__(file, protocol=5)
        self.session = session
        self.tensors: dict[int, int] = {}
        self.keep: list = []

    def persistent_id(self, obj):
        if isinstance(obj, RemoteObject):
            self.session._check_generation(obj)
            return ("h", obj._id)
        if isinstance(obj, wire.ModuleRef) and obj.handle is not None:
            return ("h", obj.handle._id)
        if isinstance(obj, torch.Tensor):
            key = id(obj)
            if key in self.tensors:
                return ("t", self.tensors[key], None)
            self.tensors[key] = len(self.tensors)
            self.keep.append(obj)
            return ("t", self.tensors[key], _tensor_payload(obj))
        if self.session.by_callback(obj):
            name = getattr(obj, "__name__", type(obj).__name__)
            return ("cb", self.session.register_callback(obj), str(name), _is_check_object(obj))
        return None


def _tensor_payload(t: torch.Tensor):
    data = t.detach().cpu().resolve_conj().resolve_neg().contiguous()
    raw = b"" if data.numel() == 0 else data.reshape(-1).view(torch.uint8).numpy().tobytes()
    grad = bool(t.requires_grad)
    return (data.dtype, tuple(data.shape), raw, grad, isinstance(t, torch.nn.Parameter))
