"""The small vocabulary every check is written in."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from contextlib import contextmanager, redirect_stdout

import torch


class CheckFailed(AssertionError):
    """A check failed. The message says what was expected and the likely bug."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def as_tensor(value, what: str) -> torch.Tensor:
    expect(isinstance(value, torch.Tensor), f"{what} should be a torch.Tensor, got {type(value)}")
    return value


def expect_shape(value, shape: tuple[int, ...], what: str) -> torch.Tensor:
    t = as_tensor(value, what)
    expect(tuple(t.shape) == tuple(shape), f"{what} has shape {tuple(t.shape)}, expected {shape}")
    return t


def matches(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    if actual.shape != expected.shape:
        return False
    return bool(torch.allclose(actual.double(), expected.double(), atol=atol, rtol=1e-4))


def expect_close(
    actual,
    expected: torch.Tensor,
    what: str,
    likely_bugs: Mapping[str, torch.Tensor] | None = None,
    atol: float = 1e-5,
) -> None:
    """``actual`` equals ``expected``; otherwise name the first known bug it matches.

    ``likely_bugs`` maps a diagnosis ("softmax over the query axis") to the output that bug
    produces on the same inputs, so a wrong answer is explained, not just rejected.
    """
    actual = expect_shape(actual, tuple(expected.shape), what)
    expect(
        bool(torch.isfinite(actual).all()) or not bool(torch.isfinite(expected).all()),
        f"{what} contains NaN or inf where the correct result is finite",
    )
    if matches(actual, expected, atol):
        return
    for diagnosis, wrong in (likely_bugs or {}).items():
        if matches(actual, wrong, atol):
            raise CheckFailed(f"{what} is wrong: it looks like {diagnosis}.")
    diff = (actual.double() - expected.double()).abs().max().item()
    raise CheckFailed(f"{what} differs from the correct result (largest difference {diff:.3g}).")


def private_copies(inputs: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """Copies to hand to the student's code; the originals stay with the check (and its
    oracle), so nothing the student's code does to its arguments can steer the verdict."""
    return {name: None if t is None else t.detach().clone() for name, t in inputs.items()}


def expect_copies_unchanged(originals: Mapping, copies: Mapping) -> None:
    """The student's code left its private copies as they were handed over (same shape,
    dtype and values): it did not modify its inputs in place."""
    for name, original in originals.items():
        copy = copies[name]
        if original is None:
            continue
        same = copy.shape == original.shape and copy.dtype == original.dtype
        expect(
            same and bool(torch.equal(copy.detach(), original)),
            f"{name} was modified in place: compute into new tensors instead "
            "(e.g. x = x + 1 or masked_fill, not x += 1 or masked_fill_)",
        )


def call_on_copies(fn: Callable, inputs: Mapping[str, torch.Tensor | None], **kwargs):
    """``fn`` on private copies of ``inputs`` (positionally, in order, Nones left out); then
    checks that the copies came back unchanged."""
    copies = private_copies(inputs)
    result = fn(*[c for c in copies.values() if c is not None], **kwargs)
    expect_copies_unchanged(inputs, copies)
    return result


def parameter_values(gen: torch.Generator, shapes: Mapping[str, tuple[int, ...]], dtype) -> dict:
    """Seeded values for parameters of these names and shapes: LayerNorm gains (``norm``
    weights) near 1, everything else scaled like a fresh layer (by 1/√fan-in)."""
    values = {}
    for name, shape in shapes.items():
        if "norm" in name and name.endswith("weight"):
            values[name] = (1 + 0.2 * randn(gen, *shape, dtype=torch.float64)).to(dtype)
        else:
            fan_in = shape[-1] if len(shape) > 1 else 4
            values[name] = (randn(gen, *shape, dtype=torch.float64) / fan_in**0.5).to(dtype)
    return values


def load_parameters(module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load the check's own parameter values into the student's module, strictly."""
    try:
        module.load_state_dict({name: t.clone() for name, t in state.items()})
    except Exception as error:  # noqa: BLE001 - the diagnosis is the point
        raise CheckFailed(
            f"could not load the parameters {sorted(state)} into {what}: keep the layers that "
            f"__init__ creates, with their names (the checks set their weights). {error}"
        ) from None


def expect_unchanged(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]):
    """The function did not modify its inputs in place."""
    for name, tensor in before.items():
        expect(
            torch.equal(tensor, after[name]),
            f"{name} was modified in place: compute into new tensors instead "
            "(e.g. masked_fill, not masked_fill_)",
        )


def passed(title: str, names: list[str]) -> None:
    """Print the checks that passed, so a student sees what was verified."""
    for name in names:
        print(f"✓ {title}: {name}")
    print(f"All {len(names)} checks passed for {title}.")


@contextmanager
def one_thread():
    """Run on one CPU thread: probes use tiny tensors, for which PyTorch's thread pool only adds
    overhead, and on a busy machine (a grading batch) waiting for a second core can turn a
    microsecond operation into milliseconds. The student's own setting is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_VERDICTS: list[list[dict]] = []  # open recordings (see ``recording``)
_HIDDEN: list[str] = []  # titles of the ``hidden`` blocks being run


@contextmanager
def recording():
    """Collect the verdict of every probe run inside: the structured channel a grader reads
    (never the printed text, which the student's objects can write into). Each verdict is a
    dict: ``title``, ``probe``, ``passed``, ``hidden`` (inside ``hidden``), and for a failure
    the check's own ``message`` and, when the student's code raised, the exception's type
    (``raised``), never its message."""
    verdicts: list[dict] = []
    _VERDICTS.append(verdicts)
    try:
        yield verdicts
    finally:
        _VERDICTS.remove(verdicts)


def _record(**verdict) -> None:
    verdict["hidden"] = bool(_HIDDEN)
    for verdicts in _VERDICTS:
        verdicts.append(verdict)


def run(title: str, probes: Mapping[str, Callable[[], None]]) -> None:
    """Run named probes in order; stop at the first failure, prefixed with its name."""
    for name, probe in probes.items():
        try:
            with one_thread():
                probe()
        except Exception as error:
            if isinstance(error, CheckFailed):
                _record(title=title, probe=name, passed=False, message=str(error))
                raise CheckFailed(f"{title} — {name}: {error}") from None
            # The student's code crashed (or raised a look-alike of CheckFailed): say where.
            # The printed failure keeps the student's message for them to debug; the recorded
            # one does not, since it could carry the inputs of hidden checks into feedback.
            kind = type(error).__name__
            _record(title=title, probe=name, passed=False, message="", raised=kind)
            raise CheckFailed(f"{title} — {name}: your code raised {kind}: {error}") from None
        _record(title=title, probe=name, passed=True)
    passed(title, list(probes))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def valid_lengths(B: int, S: int, gap: int = 1) -> list[int]:
    """Distinct valid lengths for a padded batch, the first full: S, S-gap-1, S-gap-2, ...
    (at least 1), so a probe sees real and padded positions in every row but the first."""
    return [S] + [max(1, S - gap - b) for b in range(1, B)]


def real_positions(lens: list[int] | torch.Tensor, S: int) -> torch.Tensor:
    """(B, S) boolean, True on the first ``lens[b]`` positions of row b (True = may attend)."""
    return torch.arange(S)[None, :] < torch.as_tensor(lens)[:, None]


def randn(gen: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normal numbers drawn in float64 from ``gen``, then cast: the same values
    (up to rounding) whatever the dtype a check asks for."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


@contextmanager
def graded_alone(fn: Callable, **references: Callable):
    """While ``fn`` runs, the helpers it calls by these global names are the references.

    Each exercise is graded on its own: a bug in an earlier exercise (say ``softmax``) must not
    cost the points of a later one that calls it.
    """
    namespace = getattr(fn, "__globals__", {})
    saved = {name: namespace[name] for name in references if name in namespace}
    namespace.update(references)
    try:
        yield
    finally:
        for name in references:
            namespace.pop(name, None)
        namespace.update(saved)


@contextmanager
def hidden(title: str):
    """Run hidden checks without listing their probes: one summary line, or the failure."""
    _HIDDEN.append(title)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        _HIDDEN.pop()
    _record(title=title, probe="hidden checks", passed=True)
    print(f"✓ {title}: hidden checks passed.")
