"""Chapter 7's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

from tests.exercises import GradingContract, templated
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "07-training-on-a-gpu.md")

ALTERNATIVES = {
    "the paper's formula literally, an ExitStack, a hand-written clip, contiguous shards": """
def lr_factor(schedule, step, warmup, total):
    _check_schedule(schedule, step, warmup, total)
    if schedule == "constant":
        return 1.0
    s = step + 1
    if schedule == "noam":
        d_model = 512  # any width: the normalisation cancels it
        peak = d_model**-0.5 * warmup**-0.5
        return d_model**-0.5 * min(s**-0.5, s * warmup**-1.5) / peak
    if s <= warmup:
        return s / warmup
    return (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2


def train_step(model, optimizer, scaler, micro_batches, loss_fn,
               autocast=contextlib.nullcontext, clip=None):
    for p in model.parameters():
        p.grad = None
    losses = []
    for i, batch in enumerate(micro_batches):
        with contextlib.ExitStack() as stack:
            if hasattr(model, "no_sync") and i + 1 < len(micro_batches):
                stack.enter_context(model.no_sync())
            with autocast():
                loss = loss_fn(model, batch)
            losses.append(loss.item())
            scaler.scale(loss / len(micro_batches)).backward()
    scaler.unscale_(optimizer)
    if clip:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for g in grads:
            g.mul_(factor)
    scaler.step(optimizer)
    scaler.update()
    return sum(losses) / len(losses)


def shard(num_items, rank, world_size, epoch, seed=0):
    order = list(range(num_items))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    each = num_items // world_size
    return order[rank * each : (rank + 1) * each]
""",
    "torch's DistributedSampler for the shard, returned as a tensor": """
def shard(num_items, rank, world_size, epoch, seed=0):
    sampler = torch.utils.data.DistributedSampler(
        range(num_items), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))
""",
}

_LR = """
def lr_factor(schedule, step, warmup, total):
    _check_schedule(schedule, step, warmup, total)
    if schedule == "constant":
        return 1.0
    s = {s}
    if schedule == "noam":
        return {noam}
    if s <= {peak}:
        return s / {peak}
    return 0.5 * (1 + math.cos(math.pi * (s - {peak}) / ({end} - {peak})))
"""
_LR_DEFAULTS = dict(
    s="step + 1", noam="min(s / warmup, math.sqrt(warmup / s))", peak="warmup", end="total"
)
_lr = templated("lr_factor_tests", _LR, _LR_DEFAULTS)

_STEP = """
def train_step(model, optimizer, scaler, micro_batches, loss_fn,
               autocast=contextlib.nullcontext, clip=None):
    k = len(micro_batches)
    {zero}
    total = 0.0
    for i, batch in enumerate(micro_batches):
        {inner}
        defer = {defer}
        with model.no_sync() if defer else contextlib.nullcontext():
            {forward_backward}
        total += loss.detach()
        {each}
    {clip}
    {step}
    {update}
    return {result}
"""
_STEP_DEFAULTS = dict(
    zero="optimizer.zero_grad()",
    inner="pass",
    defer='i < k - 1 and hasattr(model, "no_sync")',
    forward_backward="with autocast():\n"
    "                loss = loss_fn(model, batch) / k\n"
    "            scaler.scale(loss).backward()",
    each="pass",
    clip="scaler.unscale_(optimizer)\n"
    "    if clip is not None:\n"
    "        nn.utils.clip_grad_norm_(model.parameters(), clip)",
    step="scaler.step(optimizer)",
    update="scaler.update()",
    result="float(total)",
)
_step = templated("train_step_tests", _STEP, _STEP_DEFAULTS)

_SHARD = """
def shard(num_items, rank, world_size, epoch, seed=0):
    gen = torch.Generator().manual_seed({seed})
    order = torch.randperm(num_items, generator=gen).tolist()
    {cut}
    return {take}
"""
_SHARD_DEFAULTS = dict(
    seed="seed + epoch",
    cut="usable = num_items - num_items % world_size",
    take="order[rank:usable:world_size]",
)
_shard = templated("shard_tests", _SHARD, _SHARD_DEFAULTS)

MUTANTS = {
    "schedule: off by one step (s = step)": _lr(s="step"),
    "schedule: peaking one step late": _lr(
        noam="min(s / (warmup + 1), math.sqrt((warmup + 1) / s))", peak="(warmup + 1)"
    ),
    "schedule: noam not normalised": _lr(noam="min(s ** -0.5, s * warmup ** -1.5)"),
    "schedule: cosine ending at total + warmup": _lr(end="(total + warmup)"),
    "schedule: cosine without warm-up": _lr(peak="0"),
    "step: clipping before unscaling": _step(
        clip="if clip is not None:\n"
        "        nn.utils.clip_grad_norm_(model.parameters(), clip)\n"
        "    scaler.unscale_(optimizer)"
    ),
    "step: no unscale before clipping": _step(
        clip="if clip is not None:\n        nn.utils.clip_grad_norm_(model.parameters(), clip)"
    ),
    "step: loss not divided by the accumulation steps": _step(
        forward_backward="with autocast():\n"
        "                loss = loss_fn(model, batch)\n"
        "            scaler.scale(loss).backward()",
        result="float(total) / k",
    ),
    "step: optimizer step every micro-batch": _step(
        each="scaler.step(optimizer)\n        scaler.update()", step="pass", update="pass"
    ),
    "step: zero-grad inside the accumulation window": _step(
        inner="optimizer.zero_grad()", zero="pass"
    ),
    "step: no zero-grad": _step(zero="pass"),
    "step: autocast around the backward pass": _step(
        forward_backward="with autocast():\n"
        "                loss = loss_fn(model, batch) / k\n"
        "                scaler.scale(loss).backward()"
    ),
    "step: forward outside autocast": _step(
        forward_backward="loss = loss_fn(model, batch) / k\n"
        "            scaler.scale(loss).backward()"
    ),
    "step: no no_sync": _step(defer="False"),
    "step: no_sync on every micro-batch": _step(defer='hasattr(model, "no_sync")'),
    "step: optimizer.step instead of scaler.step": _step(step="optimizer.step()"),
    "step: no scaler.update": _step(update="pass"),
    "step: not clipped": _step(clip="scaler.unscale_(optimizer)"),
    "step: returns the last loss": _step(result="loss.item() * k"),
    "step: micro-batch modified in place": _step(inner="batch[0].mul_(1.0001)"),
    "shard: overlapping (each rank shuffles with its own seed)": _shard(
        seed="seed + epoch + 1000 * rank"
    ),
    "shard: uneven (the remainder kept)": _shard(cut="usable = num_items"),
    "shard: ignores the epoch": _shard(seed="seed"),
    "shard: ignores the seed": _shard(seed="epoch"),
    "shard: always drops the same items": _shard(
        cut="usable = num_items - num_items % world_size\n"
        "    order = [i for i in order if i < usable]"
    ),
}


class TestChapter7(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
    prelude = (
        "import contextlib\nimport math\nimport random\n\nimport torch\nfrom torch import nn\n"
    )
