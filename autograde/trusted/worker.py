"""The sandboxed side: runs one student notebook and answers the grader's questions about it.

Started by the grader inside the sandbox, one process per submitted notebook, never reused.
It executes the student's cells in an IPython shell (no Jupyter kernel: no ZMQ, no second
process), and serves requests on a pipe: look up a name, call a function, read an attribute,
run a backward pass... Results go back as plain values or handles (see ``wire``).

Nothing here is trusted: the student's code runs in this process and may replace any of it.
The grader therefore never relies on this file for a verdict; it only asks it what the
student's code returns. This module imports only the standard library, torch and IPython.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import sys
import traceback

try:  # in the sandbox, wire.py sits next to this file in the _grader package
    from . import wire
except ImportError:  # pragma: no cover - started as a plain script
    import wire  # type: ignore[no-redef]

OUTPUT_CAP = 128 << 10  # characters of captured output kept per reply (the judge keeps less)
MAIN_PID = os.getpid()


class Capture(io.TextIOBase):
    """sys.stdout / sys.stderr: text goes back to the grader with the next reply."""

    def __init__(self, name: str):
        self.name = name
        self.parts: list[str] = []
        self.size = 0
        self.dropped = False

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        if self.size < OUTPUT_CAP:
            keep = text[: OUTPUT_CAP - self.size]
            self.parts.append(keep)
            self.size += len(keep)
        if self.size >= OUTPUT_CAP and len(text):
            self.dropped = True
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def drain(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[{self.name} truncated by the grader]\n"
        self.parts, self.size, self.dropped = [], 0, False
        return text


class CallbackStub:
    """A function that lives in the grader: calling it asks the grader to run it."""

    def __init__(self, worker: Worker, cid: int, name: str):
        self._worker, self._cid, self.__name__ = worker, cid, name

    def __call__(self, *args, **kwargs):
        return self._worker.callback(self._cid, args, kwargs)

    def __repr__(self) -> str:
        return f"<grader function {self.__name__}>"


class GraderObject:
    """An object of the checks that lives in the grader (a stand-in model, say): reading one
    of its public attributes, or calling one of its methods, asks the grader."""

    def __init__(self, worker: Worker, cid: int, name: str):
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_cid", cid)
        object.__setattr__(self, "_name", name)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._worker.callback(self._cid, None, None, attribute=name)

    def __call__(self, *args, **kwargs):
        return self._worker.callback(self._cid, args, kwargs)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"the grader's {self._name} is read-only")

    def __repr__(self) -> str:
        return f"<grader object {self._name}>"


class Worker:
    def __init__(self):
        import torch

        self.torch = torch
        self.objects: dict[int, object] = {}
        self.ids: dict[int, int] = {}
        self.graphs: dict[int, tuple[list, list]] = {}
        self.opaque: set[int] = set()  # ids of objects that came from the grader by reference
        self.out, self.err = Capture("stdout"), Capture("stderr")
        self.shell = None
        self.cmd_fd, self.reply_fd = 3, 4

    # ------------------------------------------------------------------ transport

    def send(self, message: dict, blobs: list[bytes] | None = None) -> None:
        message["out"], message["err"] = self.out.drain(), self.err.drain()
        wire.write_frame(self.reply_fd, wire.pack(message, blobs or []))

    def receive(self):
        frame = wire.read_frame(self.cmd_fd)
        return _Unpickler(io.BytesIO(frame), self).load()

    def handle(self, obj) -> int:
        key = id(obj)
        if key in self.ids:
            return self.ids[key]
        h = len(self.objects) + 1
        self.objects[h] = obj
        self.ids[key] = h
        return h

    # ------------------------------------------------------------------ encoding

    def encode(self, value, blobs: list[bytes], graph: list | None = None, by_ref=False):
        return _Encoder(self, blobs, graph, by_ref).encode(value, 0, set())

    # ------------------------------------------------------------------ serving

    def serve(self) -> None:
        self.send({"kind": "ready", "pid": os.getpid()})
        while True:
            message = self.receive()
            if message[0] == "bye":
                return
            self.answer(message)

    def answer(self, message) -> None:
        blobs: list[bytes] = []
        try:
            reply = self.dispatch(message, blobs)
        except BaseException as error:  # noqa: BLE001 - everything goes back to the grader
            if isinstance(error, wire.PeerGone):
                raise
            blobs = []
            reply = _error_reply(error)
        if os.getpid() != MAIN_PID:  # a fork of the student's made it back here: stop it
            os._exit(0)
        self.send(reply, blobs)

    def callback(self, cid: int, args, kwargs, attribute: str | None = None):
        blobs: list[bytes] = []
        if attribute is None:
            request = {"kind": "callback", "id": cid, "op": "call"}
            request["args"] = self.encode((args, kwargs), blobs)
        else:
            request = {"kind": "callback", "id": cid, "op": "getattr", "name": attribute}
        self.send(request, blobs)
        while True:
            message = self.receive()
            if message[0] == "cb_return":
                return message[1]
            if message[0] == "cb_error":
                raise _rebuild_error(message[1], message[2])
            if message[0] == "bye":
                os._exit(0)
            self.answer(message)

    def dispatch(self, message, blobs: list[bytes]) -> dict:
        op = message[0]
        if op == "exec":
            return self.exec_cell(message[1])
        if op == "resolve":
            return self.resolve(message[1], blobs)
        if op == "rng_get":
            return {"kind": "ok", "value": self.encode(self.torch.get_rng_state(), blobs)}
        if op == "rng_set":
            self.torch.set_rng_state(message[1])
            return {"kind": "ok", "value": None}
        if op == "release":
            self.graphs.clear()
            return {"kind": "ok", "value": None}
        if op == "backward":
            return self.backward(message[1], message[2], blobs)
        op, h, args, ctx = message[0], message[1], message[2], message[3]
        target = self.objects[h]
        torch = self.torch
        torch.set_default_dtype(ctx["dtype"])
        if ctx.get("rng") is not None:
            torch.set_rng_state(ctx["rng"])
        with torch.set_grad_enabled(ctx["grad"]):
            reply = self.operate(op, target, args, blobs, ctx["grad"])
        if ctx.get("rng") is not None:
            reply["rng"] = self.encode(torch.get_rng_state(), blobs)
        return reply

    def operate(self, op, target, args, blobs, grad) -> dict:
        if op == "call":
            return self.call(target, args[0], args[1], blobs, grad)
        if op == "getattr":
            value = getattr(target, args[0])
            return {"kind": "ok", "value": self.encode(value, blobs, by_ref=True)}
        if op == "setattr":
            setattr(target, args[0], args[1])
            value = None
        elif op == "delattr":
            delattr(target, args[0])
            value = None
        elif op == "getitem":
            return {"kind": "ok", "value": self.encode(target[args[0]], blobs, by_ref=True)}
        elif op == "setitem":
            target[args[0]] = args[1]
            value = None
        elif op == "delitem":
            del target[args[0]]
            value = None
        elif op == "contains":
            value = bool(args[0] in target)
        elif op == "len":
            value = int(len(target))
        elif op == "bool":
            value = bool(target)
        elif op == "iter":
            value = iter(target)
        elif op == "next":
            value = next(target)
        elif op == "repr":
            value = str(repr(target))[:10000]
        elif op == "str":
            value = str(str(target))[:10000]
        elif op == "float":
            value = float(target)
        elif op == "int":
            value = int(target)
        elif op == "index":
            value = target.__index__()
        else:
            raise ValueError(f"unknown request {op!r}")
        return {"kind": "ok", "value": self.encode(value, blobs)}

    def call(self, fn, args, kwargs, blobs, grad) -> dict:
        tensors = wire.walk_tensors((args, kwargs), lambda o: id(o) in self.opaque)
        before = [_fingerprint(t) for t in tensors]
        leaves = [t for t in tensors if t.requires_grad]
        result = fn(*args, **kwargs)
        graph: list = []
        reply = {"kind": "ok", "value": self.encode(result, blobs, graph if grad else None)}
        changed = []
        for i, (t, fp) in enumerate(zip(tensors, before, strict=True)):
            if _fingerprint(t) != fp:
                changed.append([i, self.encode(t.detach(), blobs)])
        reply["mutated"] = changed
        if graph:
            gid = len(self.graphs) + 1
            self.graphs[gid] = (leaves, graph)
            reply["graph"] = gid
        return reply

    def backward(self, gid: int, grads: list, blobs) -> dict:
        torch = self.torch
        leaves, outputs = self.graphs[gid]
        for leaf in leaves:
            leaf.grad = None
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
        if pairs:
            torch.autograd.backward(
                [o for o, _ in pairs], [g.to(o.dtype) for o, g in pairs], retain_graph=True
            )
        values = [None if leaf.grad is None else leaf.grad.detach() for leaf in leaves]
        return {"kind": "ok", "value": self.encode(values, blobs)}

    def resolve(self, names: list[str], blobs) -> dict:
        namespace = self.shell.user_ns
        values = {}
        for name in names:
            if name in namespace:
                values[name] = self.encode(namespace[name], blobs)
            else:
                values[name] = {"$": "missing"}
        return {"kind": "ok", "value": values}

    def exec_cell(self, source: str) -> dict:
        result = self.shell.run_cell(source, store_history=False, silent=True)
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            return {"kind": "ok", "value": None}
        return {"kind": "ok", "value": None, "cell_error": _describe(error)}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, worker: Worker):
        super().__init__(file)
        self.worker = worker
        self.tensors: dict[int, object] = {}

    def persistent_load(self, pid):
        kind = pid[0]
        if kind == "h":
            obj = self.worker.objects[pid[1]]
        elif kind == "cb":
            stub = GraderObject if len(pid) > 3 and pid[3] else CallbackStub
            obj = stub(self.worker, pid[1], pid[2])
        elif kind == "t":
            index, payload = pid[1], pid[2]
            if index not in self.tensors:
                self.tensors[index] = _tensor_from(self.worker.torch, payload)
            return self.tensors[index]
        else:
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        self.worker.opaque.add(id(obj))
        return obj


def _tensor_from(torch, payload):
    dtype, shape, data, grad, param = payload
    if data:
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
    else:
        tensor = torch.empty(shape, dtype=dtype)
    if param:
        return torch.nn.Parameter(tensor, requires_grad=grad)
    return tensor.requires_grad_(grad)


def _fingerprint(t):
    data = t.detach()
    try:
        raw = _raw_bytes(data)
    except (RuntimeError, TypeError):
        raw = None
    return (tuple(data.shape), str(data.dtype), raw)


def _raw_bytes(t) -> bytes:
    t = t.resolve_conj().resolve_neg().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes()


class _Encoder:
    def __init__(self, worker: Worker, blobs, graph, by_ref):
        self.worker, self.blobs, self.graph, self.by_ref = worker, blobs, graph, by_ref
        self.nodes = 0

    def blob(self, data: bytes) -> int:
        self.blobs.append(data)
        return len(self.blobs) - 1

    def handle(self, value):
        kind = type(value)
        return {
            "$": "handle",
            "id": self.worker.handle(value),
            "type": f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}",
            "callable": callable(value),
        }

    def encode(self, value, depth, path: set):
        torch = self.worker.torch
        self.nodes += 1
        if value is None or isinstance(value, (bool, str)) and type(value) in (bool, str):
            return value
        if type(value) is int:
            return value if abs(value) < 10**4000 else self.handle(value)
        if type(value) is float:
            return value
        if depth > 40 or self.nodes > 200_000 or id(value) in path:
            return self.handle(value)
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if type(value) is complex:
            return {"$": "complex", "v": [value.real, value.imag]}
        if type(value) in (bytes, bytearray):
            return {"$": "bytes", "b": self.blob(bytes(value))}
        if isinstance(value, torch.dtype):
            name = str(value).removeprefix("torch.")
            return {"$": "dtype", "v": name} if name in wire.TORCH_DTYPES else self.handle(value)
        if isinstance(value, torch.device) and value.type in ("cpu", "meta"):
            return {"$": "device", "v": value.type}
        if isinstance(value, torch.Size):
            return {"$": "size", "v": [int(d) for d in value]}
        if value is Ellipsis:
            return {"$": "ellipsis"}
        if type(value) is slice:
            parts = [value.start, value.stop, value.step]
            if all(p is None or type(p) is int for p in parts):
                return {"$": "slice", "v": parts}
            return self.handle(value)
        if type(value).__module__ == "types" and type(value).__name__ == "ModuleType":
            return {"$": "module", "name": str(value.__name__), "id": self.worker.handle(value)}
        inner = path | {id(value)}
        if isinstance(value, tuple):
            items = [self.encode(v, depth + 1, inner) for v in value]
            module = type(value).__module__
            if module == "torch.return_types":
                return {"$": "structseq", "type": type(value).__name__, "v": items}
            return {"$": "tuple", "v": items}
        if isinstance(value, list):
            if self.by_ref and not all(_is_plain(v) for v in value):
                return self.handle(value)
            return {"$": "list", "v": [self.encode(v, depth + 1, inner) for v in value]}
        if isinstance(value, dict):
            if (
                not all(_is_plain_key(k) for k in value)
                or self.by_ref
                and not all(_is_plain(v) for v in value.values())
            ):
                return self.handle(value)
            return {
                "$": "dict",
                "v": [
                    [self.encode(k, depth + 1, inner), self.encode(v, depth + 1, inner)]
                    for k, v in value.items()
                ],
            }
        if isinstance(value, (set, frozenset)):
            if not all(_is_plain_key(v) for v in value):
                return self.handle(value)
            tag = "set" if isinstance(value, set) else "frozenset"
            return {"$": tag, "v": [self.encode(v, depth + 1, inner) for v in value]}
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
            dtype = value.dtype.str
            if dtype in wire.NUMPY_DTYPES:
                array = numpy.ascontiguousarray(value)
                return {
                    "$": "ndarray",
                    "dtype": dtype,
                    "shape": list(array.shape),
                    "b": self.blob(array.tobytes()),
                    "scalar": isinstance(value, numpy.generic),
                }
        return self.handle(value)

    def tensor(self, value):
        torch = self.worker.torch
        name = str(value.dtype).removeprefix("torch.")
        if value.layout != torch.strided or name not in wire.TORCH_DTYPES:
            return self.handle(value)
        data = value.detach()
        if data.device.type != "cpu":
            data = data.cpu()
        node = {
            "$": "tensor",
            "dtype": name,
            "shape": list(data.shape),
            "b": self.blob(_raw_bytes(data)),
            "grad": bool(value.requires_grad),
            "param": isinstance(value, torch.nn.Parameter),
        }
        if self.graph is not None and value.requires_grad:
            node["gi"] = len(self.graph)
            self.graph.append(value)
        return node


def _is_plain(value) -> bool:
    torch = sys.modules["torch"]
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return True
    if isinstance(value, (torch.Tensor, torch.dtype, torch.Size)):
        return True
    if type(value) in (tuple, list):
        return all(_is_plain(v) for v in value)
    return False


def _is_plain_key(value) -> bool:
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return True
    return type(value) in (tuple, frozenset) and all(_is_plain_key(v) for v in value)


def _describe(error: BaseException) -> dict:
    bases = [k.__name__ for k in type(error).__mro__ if k.__module__ == "builtins"]
    try:
        message = str(error)
    except Exception:  # noqa: BLE001 - a student's __str__ may itself fail
        message = "<unprintable exception>"
    try:
        tb = "".join(traceback.format_exception(error))[-20000:]
    except Exception:  # noqa: BLE001
        tb = ""
    return {
        "type": str(type(error).__name__)[:200],
        "bases": bases[:20],
        "message": message[:20000],
        "traceback": tb,
    }


def _error_reply(error: BaseException) -> dict:
    return {"kind": "error", "error": _describe(error)}


def _rebuild_error(name: str, message: str) -> BaseException:
    import builtins

    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except TypeError:
            pass
    return RuntimeError(f"{name}: {message}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    lib = options.get("--lib")
    if lib and lib not in sys.path:
        sys.path.insert(0, lib)
    scratch = options.get("--scratch", "/tmp")
    for name in ("HOME", "IPYTHONDIR", "MPLCONFIGDIR"):
        os.makedirs(os.environ.get(name, scratch), exist_ok=True)
    fonts = options.get("--mplcache")
    if fonts and os.path.isdir(fonts):
        for entry in os.listdir(fonts):
            shutil.copy(os.path.join(fonts, entry), os.environ.get("MPLCONFIGDIR", scratch))
    os.chdir(scratch)
    worker = Worker()
    worker.cmd_fd = int(options.get("--cmd-fd", 3))
    worker.reply_fd = int(options.get("--reply-fd", 4))
    worker.torch.set_num_threads(max(1, int(options.get("--threads", 1))))
    sys.stdout, sys.stderr = worker.out, worker.err
    sys.stdin = io.StringIO()
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Shell(InteractiveShell):
        def enable_gui(self, gui=None):  # `%matplotlib inline` works as in a kernel
            pass

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    worker.shell = Shell.instance(config=config)
    try:
        worker.serve()
    except wire.PeerGone:
        pass
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
