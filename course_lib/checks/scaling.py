"""Checks for chapter 7: the warm-up schedule, the training step, and each rank's shard.

Written to the rules for check code of the course design: every call hands the student's code
private copies of its inputs and verifies they come back unchanged; the model, its parameter
values, the optimizer and the scaler are the check's own; no function here computes an
exercise's answer for arguments of one's choosing. The expected schedule is computed inside
the check for that check's warm-up and length; the expected step is computed by the check, in
float64, on its own copy of its own model; the shard is checked by its properties (any
disjoint, equal, covering shard that reshuffles with the epoch is correct).
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks.core import (
    expect,
    expect_close,
    generator,
    load_parameters,
    parameter_values,
    randn,
    run,
)

F64 = torch.float64


# --------------------------------------------------------------------------- the schedule


def check_lr_factor(fn, warmup: int = 4, total: int = 20) -> None:
    """``fn(schedule, step, warmup, total)``: linear warm-up to 1 at step warmup − 1, then
    the paper's inverse square root ("noam") or a half cosine to 0 at the last step."""
    steps = range(total)

    def table(schedule, *, shift=1, peak=warmup, norm=True, end=total) -> torch.Tensor:
        """The factors of steps 0 … total − 1 in float64; the keywords reproduce known bugs."""
        values = []
        for step in steps:
            s = step + shift
            if s <= 0:
                values.append(0.0)
            elif schedule == "noam":
                value = min(s / peak, math.sqrt(peak / s))
                values.append(value if norm else value / math.sqrt(peak))
            elif s <= peak:
                values.append(s / peak)
            else:
                progress = min(1.0, (s - peak) / max(1, end - peak))
                values.append(0.5 * (1 + math.cos(math.pi * progress)))
        return torch.tensor(values, dtype=F64)

    def factors(schedule) -> torch.Tensor:
        got = []
        for step in steps:
            value = fn(schedule, step, warmup, total)
            expect(
                isinstance(value, numbers.Real) and not isinstance(value, bool),
                f"lr_factor({schedule!r}, {step}, ...) returned {type(value).__name__}: return "
                "a Python float (the optimizer's lr is a number, not a tensor)",
            )
            got.append(float(value))
        return torch.tensor(got, dtype=F64)

    def bugs(schedule) -> dict[str, torch.Tensor]:
        found = {
            "the step counted from 0 (the first step's factor is 0, so step 0 learns "
            "nothing): use s = step + 1": table(schedule, shift=0),
            f"the peak at step {warmup} instead of {warmup - 1}: warm up over s = step + 1 "
            "= 1 … warmup": table(schedule, peak=warmup + 1),
        }
        if schedule == "noam":
            unnormalised = "the paper's formula without its normalisation: the peak is "
            found[unnormalised + "warmup^-1/2, not 1 (multiply by √warmup)"] = table(
                schedule, norm=False
            )
        else:
            late = "the cosine ending after warmup + total steps instead of at the last step"
            found[late] = table(schedule, end=total + warmup)
        return found

    def warm_up(schedule):
        def probe():
            got = factors(schedule)
            expect_close(
                got[:warmup],
                table(schedule)[:warmup],
                f"the {schedule} factors of steps 0 … {warmup - 1} (warmup = {warmup})",
                {k: v[:warmup] for k, v in bugs(schedule).items()},
                atol=1e-9,
            )

        return probe

    def decay(schedule, what):
        def probe():
            expect_close(factors(schedule), table(schedule), what, bugs(schedule), atol=1e-9)

        return probe

    run(
        "lr_factor",
        {
            f"noam: warm-up 1/{warmup}, 2/{warmup}, … to 1 at step {warmup - 1}": warm_up("noam"),
            "noam: then √(warmup / (step + 1))": decay(
                "noam", f"the noam factors of steps 0 … {total - 1}"
            ),
            "cosine: the same warm-up": warm_up("cosine"),
            f"cosine: then a half cosine from 1 to 0 at step {total - 1}": decay(
                "cosine", f"the cosine factors of steps 0 … {total - 1} (total = {total})"
            ),
        },
    )


# --------------------------------------------------------------------------- the step


# The probes of train_step are written so that they work where the student's code runs in
# another process (the trusted grader sends the model, optimizer and scaler there by value and
# copies changed tensors back): the loss function and the autocast stand-in are module-level
# functions, which run beside the student's code; what they see is written into the model's
# buffers, which come back; the gradients left "from before" are restored on unpickling.
_AUTOCAST = [False]  # whether the recording autocast is entered, in this process
LOG = 16  # micro-batches a model's log has room for


@contextlib.contextmanager
def _autocast_context():
    _AUTOCAST[0] = True
    try:
        yield
    finally:
        _AUTOCAST[0] = False


def recording_autocast():
    """An ``autocast`` for the checks: changes no dtype, lets the model record when it is on."""
    return _autocast_context()


def mse_of(model, batch):
    """The loss function handed to ``train_step``: mean squared error on ``(x, y)``."""
    x, y = batch
    return F.mse_loss(model(x), y)


def exploding_mse_of(model, batch):
    """A loss whose gradients are all inf or NaN (as when a scaled float16 loss overflows)."""
    return mse_of(model, batch) * float("inf")


class _Probe(torch.autograd.Function):
    """The identity, recording in the model's ``log``: for each forward pass whether the
    recording autocast was on; for each backward pass whether it was on, and whether the
    pass ran inside ``no_sync``."""

    @staticmethod
    def forward(ctx, x, model):
        ctx.model = model
        i = int(model.passes[0])
        model.log[0, min(i, LOG - 1)] = float(_AUTOCAST[0])
        model.passes[0] += 1
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        model = ctx.model
        i = int(model.passes[1])
        model.log[1, min(i, LOG - 1)] = float(_AUTOCAST[0])
        model.log[2, min(i, LOG - 1)] = float(getattr(model, "unsynced", False))
        model.passes[1] += 1
        return grad, None


class _Net(nn.Module):
    """The check's model: two linear layers around a tanh, (B, d_in) -> (B, d_out), which
    records its passes (:class:`_Probe`) and carries gradients left from before the step."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.first, self.second = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)
        self.register_buffer("log", torch.zeros(3, LOG), persistent=False)
        self.register_buffer("passes", torch.zeros(2), persistent=False)  # forward, backward

    def forward(self, x):
        return self.second(torch.tanh(_Probe.apply(self.first(x), self)))

    def leave_gradients(self, stale: dict) -> None:
        """Gradients of an earlier step, which ``train_step`` must clear before its own."""
        for name in dict(self.named_parameters()):
            self.register_buffer("stale_" + name.replace(".", "_"), stale[name].clone(),
                                 persistent=False)  # fmt: skip
        self._restore_gradients()

    def _restore_gradients(self) -> None:
        for name, p in self.named_parameters():
            p.grad = getattr(self, "stale_" + name.replace(".", "_")).clone()

    def __setstate__(self, state):  # a copy in another process gets the old gradients too
        super().__setstate__(state)
        self._restore_gradients()


class _Replica(_Net):
    """The check's model with DistributedDataParallel's ``no_sync`` context: backward passes
    inside it would skip the gradient all-reduce. The model records which ones did."""

    def __init__(self, *sizes):
        super().__init__(*sizes)
        self.unsynced = False

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced = True
        try:
            yield
        finally:
            self.unsynced = False


def check_train_step(
    fn, k: int = 3, sizes=(2, 4, 3), d_in: int = 5, d_hidden: int = 6, d_out: int = 3,
    clip: float = 0.05, lr: float = 0.1, dtype=torch.float32, seed: int = 0,
) -> None:  # fmt: skip
    """``fn(model, optimizer, scaler, micro_batches, loss_fn, autocast=..., clip=...)``: one
    optimizer step on the mean of the micro-batches' losses.

    Where the scaler went to another process (the trusted grader), its scale after the call
    cannot be read back, and the check that ``scaler.update()`` lowered it is skipped; that
    the overflowing step itself was skipped is checked everywhere.
    """
    if k > LOG:
        raise ValueError(f"k must be at most {LOG}, got {k}")
    gen = generator(seed)
    rows = [sizes[i % len(sizes)] for i in range(k)]  # micro-batches of unequal sizes
    batches = [(randn(gen, b, d_in, dtype=dtype), randn(gen, b, d_out, dtype=dtype)) for b in rows]
    shapes = {n: tuple(p.shape) for n, p in _Net(d_in, d_hidden, d_out).named_parameters()}
    state = parameter_values(gen, shapes, dtype)
    stale = {name: randn(gen, *shape, dtype=dtype) for name, shape in shapes.items()}

    # The step the check expects, on its own float64 copy: gradient of Σ loss_i / k,
    # clipped to norm ``limit``; SGD moves by −lr × that.
    def expected(limit=None, divide=True, only_last=False, scale=1.0):
        oracle = _Net(d_in, d_hidden, d_out).double()
        oracle.load_state_dict({n: t.double() for n, t in state.items()})
        params = list(oracle.parameters())
        grads = [torch.zeros_like(p) for p in params]
        losses = []
        for i, (x, y) in enumerate(batches):
            loss = F.mse_loss(oracle(x.double()), y.double())
            losses.append(loss.item())
            if only_last and i < k - 1:
                continue
            parts = torch.autograd.grad(loss / (k if divide else 1), params)
            for g, d in zip(grads, parts, strict=True):
                g += d * scale
        if limit is not None:
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            grads = [g * min(1.0, limit / (float(norm) + 1e-6)) for g in grads]
        grads = [g / scale for g in grads]
        after = {
            n: p.detach() - lr * g
            for (n, p), g in zip(oracle.named_parameters(), grads, strict=True)
        }
        return after, sum(losses) / k

    def setup(cls=_Net, scale=None):
        model = cls(d_in, d_hidden, d_out).to(dtype)
        load_parameters(model, state, "the check's model")
        model.leave_gradients(stale)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
        return model, optimizer, scaler

    def call(model, optimizer, scaler, loss_fn=mse_of, **kwargs):
        copies = [(x.clone(), y.clone()) for x, y in batches]
        result = fn(model, optimizer, scaler, copies, loss_fn, **kwargs)
        for i, ((x, y), (cx, cy)) in enumerate(zip(batches, copies, strict=True)):
            expect(
                torch.equal(x, cx) and torch.equal(y, cy),
                f"micro-batch {i} was modified in place: compute into new tensors instead",
            )
        return result

    def parameters_after(model, what, limit=None, likely=None):
        after, _ = expected(limit)
        got = dict(model.named_parameters())
        for name, value in after.items():
            wrong = {bug: state_of(name) for bug, state_of in (likely or {}).items()}
            expect_close(got[name].detach(), value, f"{what}: {name}", wrong, atol=2e-5)

    def bug(**kwargs):
        after = expected(**kwargs)[0]
        return lambda name: after[name]

    def expect_passes(model):
        forward, backward = (int(n) for n in model.passes)
        expect(
            forward == k and backward == k,
            f"{forward} forward and {backward} backward passes for {k} micro-batches: one of "
            "each per micro-batch (call loss_fn once per micro-batch, backward once per loss)",
        )

    def accumulated():
        model, optimizer, scaler = setup()
        loss = call(model, optimizer, scaler)
        expect_passes(model)
        parameters_after(
            model,
            f"the parameters after one step over {k} micro-batches",
            likely={
                "the gradients of before the step were kept: start with "
                "optimizer.zero_grad()": lambda name: (
                    expected()[0][name] - lr * stale[name].double()
                ),
                f"the losses not divided by the {k} micro-batches (the gradient is their "
                "sum, not their mean)": bug(divide=False),
                "only the last micro-batch counts: zero the gradients once, before the "
                "first micro-batch, not inside the loop": bug(only_last=True),
            },
        )
        expect(
            isinstance(loss, numbers.Real),
            f"train_step returned {type(loss).__name__}: return the loss as a Python float",
        )
        mean = expected()[1]
        expect(
            abs(float(loss) - mean) <= 1e-4 * max(1.0, abs(mean)),
            f"train_step returned {float(loss):.6g}, expected the mean of the micro-batches' "
            f"losses, {mean:.6g}",
        )

    def clipped():
        model, optimizer, scaler = setup()
        call(model, optimizer, scaler, clip=clip)
        parameters_after(
            model,
            f"the parameters after a step with clip = {clip}",
            clip,
            likely={
                "the gradient not clipped: nn.utils.clip_grad_norm_(model.parameters(), "
                "clip) before the step": bug(),
            },
        )

    def scaled():
        scale = 2.0**12
        model, optimizer, scaler = setup(scale=scale)
        call(model, optimizer, scaler, clip=clip)
        parameters_after(
            model,
            f"the parameters after a step with gradient scaling (scale {scale:g}) and "
            f"clip = {clip}",
            clip,
            likely={
                "clipping before unscaling: the scaled gradients were clipped, then "
                "divided by the scale (call scaler.unscale_(optimizer) before clipping)": bug(
                    limit=clip, scale=scale
                ),
                "the gradient not clipped": bug(),
            },
        )

    def overflow():
        scale = 2.0**12
        model, optimizer, scaler = setup(scale=scale)
        call(model, optimizer, scaler, loss_fn=exploding_mse_of, clip=clip)
        for name, value in state.items():
            expect(
                torch.equal(dict(model.named_parameters())[name].detach(), value),
                f"{name} changed although the gradients were inf: step with "
                "scaler.step(optimizer), which skips such a step, not optimizer.step()",
            )
        if scaler._scale is None:  # the scaler was used in another process: not observable
            return
        expect(
            scaler.get_scale() == scale / 2,
            f"the scale is {scaler.get_scale():g} after an overflow, expected {scale / 2:g}: "
            "call scaler.update() after scaler.step(optimizer)",
        )

    def autocast_forward_only():
        model, optimizer, scaler = setup()
        call(model, optimizer, scaler, autocast=recording_autocast)
        expect_passes(model)
        forward, backward = model.log[0, :k].tolist(), model.log[1, :k].tolist()
        expect(
            all(forward),
            "the forward pass (loss_fn) must run inside `with autocast():` — it ran outside "
            f"for {forward.count(0.0)} of {k} micro-batches",
        )
        expect(
            not any(backward),
            "the backward pass ran inside autocast: leave the `with autocast():` block before "
            "calling backward() (the backward pass runs in the forward's dtypes anyway)",
        )

    def no_sync():
        model, optimizer, scaler = setup(_Replica)
        call(model, optimizer, scaler)
        expect_passes(model)
        unsynced = [bool(v) for v in model.log[2, :k].tolist()]
        want = [True] * (k - 1) + [False]
        expect(
            unsynced == want,
            f"backward inside model.no_sync() per micro-batch: {unsynced}, expected {want} — "
            "with DistributedDataParallel every micro-batch but the last skips the all-reduce "
            "(`with model.no_sync():` when the model has one)",
        )

    run(
        "train_step",
        {
            f"one step over {k} micro-batches of sizes {rows}: gradients averaged, zeroed "
            "first; returns the mean loss; inputs unchanged": accumulated,
            f"the gradient clipped to norm {clip}": clipped,
            "gradient scaling: unscaled before clipping": scaled,
            "an overflowing step is skipped and the scale lowered": overflow,
            "autocast around the forward pass only": autocast_forward_only,
            "no_sync on every micro-batch but the last": no_sync,
        },
    )


# --------------------------------------------------------------------------- the shard


def check_shard(fn, cases=((10, 2), (11, 3), (7, 4), (5, 1)), epochs: int = 20, seed: int = 0):
    """``fn(num_items, rank, world_size, epoch, seed)``: the indices of one rank's shard."""

    def indices(n, rank, world, epoch, seed=seed) -> list[int]:
        got = fn(n, rank, world, epoch, seed)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        expect(
            isinstance(got, (list, tuple)) and all(isinstance(i, int) for i in got),
            f"shard({n}, {rank}, {world}, {epoch}) should return a list of ints, got "
            f"{type(got).__name__}",
        )
        expect(
            all(0 <= i < n for i in got) and len(set(got)) == len(got),
            f"shard({n}, {rank}, {world}, {epoch}) = {list(got)}: expected distinct indices "
            f"in 0 … {n - 1}",
        )
        return list(got)

    def shards(n, world, epoch, seed=seed) -> list[list[int]]:
        return [indices(n, rank, world, epoch, seed) for rank in range(world)]

    def equal_sizes():
        for n, world in cases:
            sizes = [len(s) for s in shards(n, world, 0)]
            expect(
                sizes == [n // world] * world,
                f"{n} items on {world} ranks: shard sizes {sizes}, expected {n // world} each "
                "— every rank must take as many optimizer steps (DDP's all-reduce waits for "
                f"all of them), so drop the last {n % world} of the shuffled order",
            )

    def disjoint_covering():
        for n, world in cases:
            parts = shards(n, world, 0)
            seen = [i for part in parts for i in part]
            expect(
                len(set(seen)) == len(seen),
                f"{n} items on {world} ranks: the shards {parts} overlap — every rank must "
                "shuffle with the same generator (seed and epoch, not the rank), then take "
                "its own slice",
            )

    def deterministic():
        for n, world in cases:
            first, again = shards(n, world, 3), shards(n, world, 3)
            expect(
                first == again,
                f"two calls for epoch 3 gave {first} and {again}: the shard must be a function "
                "of its arguments (seed a torch.Generator or random.Random with seed and epoch)",
            )

    def reshuffled():
        n, world = 24, 2
        orders = {tuple(indices(n, 0, world, epoch)) for epoch in range(3)}
        expect(
            len(orders) == 3,
            "rank 0 got the same items in the same order in epochs 0, 1 and 2: the order "
            "must depend on the epoch (DistributedSampler.set_epoch does this)",
        )
        other = indices(n, 0, world, 0, seed + 1)
        expect(
            other != indices(n, 0, world, 0),
            "seeds 0 and 1 gave the same shard: the order must depend on the seed too",
        )

    def nothing_left_out():
        for n, world in cases:
            seen = {i for epoch in range(epochs) for part in shards(n, world, epoch) for i in part}
            missing = sorted(set(range(n)) - seen)
            expect(
                not missing,
                f"{n} items on {world} ranks: items {missing} are in no shard in {epochs} "
                "epochs — shuffle first, then drop the tail, so that each epoch leaves out "
                "other items",
            )

    run(
        "shard",
        {
            "a list of distinct indices; every rank gets num_items // world_size": equal_sizes,
            "the shards of one epoch are disjoint": disjoint_covering,
            "the same arguments give the same shard": deterministic,
            "a new order each epoch and for each seed": reshuffled,
            f"every item is in some shard within {epochs} epochs": nothing_left_out,
        },
    )
