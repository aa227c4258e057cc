"""Chapter 3's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

from tests.exercises import GradingContract
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "03-seq2seq-attention.md")

ALTERNATIVES = {
    "einsum, torch.where and a hand-written cross-entropy": """
class AdditiveAttention(AdditiveAttention):
    def forward(self, query, keys, values, mask=None):
        hidden = torch.tanh(
            torch.einsum("ad,bd->ba", self.W_query.weight, query)[:, None]
            + torch.einsum("ak,bsk->bsa", self.W_key.weight, keys)
        )
        scores = torch.einsum("bsa,a->bs", hidden, self.v.weight[0])
        if mask is None:
            mask = torch.ones_like(scores, dtype=torch.bool)
        weights = torch.softmax(torch.where(mask, scores, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)
        context = torch.einsum("bs,bsv->bv", weights, values)
        self.last_weights = weights.detach()
        return context, weights


class AttentionDecoder(AttentionDecoder):
    def step(self, prev, state, memory, mask):
        context, weights = self.attention(query=state, keys=memory, values=memory, mask=mask)
        x = torch.cat((self.embedding(prev), context), 1)
        s = self.rnn(x, state)
        joined = torch.cat((context, s), 1)
        hidden = torch.tanh(F.linear(joined, self.combine.weight, self.combine.bias))
        return F.linear(hidden, self.out.weight, self.out.bias), s, weights


def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    logits = model(src, src_lens, tgt[:, :-1])
    labels = tgt[:, 1:]
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    real = labels != pad_id
    return -(picked * real).sum() / real.sum()


@torch.no_grad()
def greedy_decode(model, src, src_lens, max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID):
    memory, state, mask = model.encode(src, src_lens)
    B = src.shape[0]
    rows = [[] for _ in range(B)]
    done = [False] * B
    prev = torch.tensor([bos_id] * B)
    steps = []
    while len(steps) < max_len and not all(done):
        logits, state, alpha = model.step(prev, state, memory, mask)
        steps.append(alpha)
        best = logits.max(dim=1).indices.tolist()
        for b in range(B):
            rows[b].append(pad_id if done[b] else best[b])
            done[b] = done[b] or best[b] == eos_id
        prev = torch.tensor([r[-1] for r in rows])
    return torch.tensor(rows, dtype=torch.long), torch.stack(steps, 1)
""",
    "float64 inside, loops over the batch, loss by sum and count": """
class AdditiveAttention(AdditiveAttention):
    def forward(self, query, keys, values, mask=None):
        B, S, _ = keys.shape
        weights = torch.zeros(B, S, dtype=torch.float64)
        for b in range(B):
            allowed = torch.ones(S, dtype=torch.bool) if mask is None else mask[b]
            if not allowed.any():
                continue
            q = self.W_query.weight.double() @ query[b].double()
            k = keys[b].double() @ self.W_key.weight.double().T
            e = (torch.tanh(q + k) @ self.v.weight.double().T)[:, 0]
            e = e[allowed]
            weights[b, allowed] = torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()
        weights = weights.to(query.dtype)
        context = (weights[:, :, None] * values).sum(1)
        self.last_weights = weights.detach()
        return context, weights


class AttentionDecoder(AttentionDecoder):
    def step(self, prev, state, memory, mask):
        query = state
        context, weights = self.attention(query, memory, memory, mask)
        new_state = self.rnn(torch.cat([self.embedding(prev), context], dim=-1), state)
        logits = self.out(torch.tanh(self.combine(torch.cat([context, new_state], dim=-1))))
        return logits, new_state, weights


def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    inputs = tgt[:, : tgt.shape[1] - 1]
    labels = tgt[:, 1:].reshape(-1)
    logits = model(src, src_lens, inputs)
    total = F.cross_entropy(logits.flatten(0, 1), labels, reduction="none")
    keep = (labels != pad_id).to(total.dtype)
    return (total * keep).sum() / keep.sum()


@torch.no_grad()
def greedy_decode(model, src, src_lens, max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID):
    memory, state, mask = model.encode(src, src_lens)
    prev = torch.full((src.shape[0],), bos_id)
    alive = torch.ones(src.shape[0], dtype=torch.bool)
    out, att = [], []
    t = 0
    while t < max_len:
        logits, state, w = model.step(prev, state, memory, mask)
        y = torch.where(alive, logits.argmax(-1), torch.full_like(prev, pad_id))
        out.append(y)
        att.append(w)
        alive = alive & (y != eos_id)
        prev = y
        t += 1
        if not alive.any():
            break
    return torch.stack(out, 1), torch.stack(att, 1)
""",
}

_ATTENTION = """
class AdditiveAttention(AdditiveAttention):
    def forward(self, query, keys, values, mask=None):
        {before}scores = {scores}
        {body}
        context = {context}
        return context, weights
"""
_SCORES = "self.v(torch.tanh(self.W_query(query)[:, None, :] + self.W_key(keys)))[..., 0]"
_MASKED_SOFTMAX = (
    "if mask is not None:\n"
    "    scores = scores.masked_fill(~mask, float('-inf'))\n"
    "weights = torch.softmax(scores, -1).nan_to_num(0.0)"
)


def _attention(
    body=_MASKED_SOFTMAX,
    scores=_SCORES,
    context="torch.bmm(weights[:, None, :], values)[:, 0]",
    before="",
):
    """The reference additive attention with one part replaced (a mutant)."""
    return _ATTENTION.format(before=before, scores=scores, body=_indent(body), context=context)


_STEP = """
class AttentionDecoder(AttentionDecoder):
    def step(self, prev, state, memory, mask):
        embedded = self.embedding(prev)
        {body}
"""

_DECODE = """
@torch.no_grad()
def greedy_decode(model, src, src_lens, max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID):
    memory, state, mask = model.encode(src, src_lens)
    prev = torch.full((src.shape[0],), bos_id, dtype=torch.long)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    tokens, weights = [], []
    {body}
    return torch.stack(tokens, 1), torch.stack(weights, 1)
"""

_LOOP = """for _ in range({steps}):
        logits, state, alpha = model.step({feed}, {state}, memory, mask)
        y = {pick}
        tokens.append(y)
        weights.append(alpha)
        finished = finished | (y == eos_id)
        prev = y
        {stop}"""


def _loop(
    steps="max_len",
    feed="prev",
    state="state",
    pick="logits.argmax(-1).masked_fill(finished, pad_id)",
    stop="if finished.all():\n            break",
):
    return _LOOP.format(steps=steps, feed=feed, state=state, pick=pick, stop=stop)


def _indent(code: str) -> str:
    return code.replace("\n", "\n        ")


# bug class -> (the exercise whose points it must cost, the buggy code)
MUTANTS = {
    # ------------------------------------------------------------------ additive attention
    "attention: padding keys not masked": (
        "additive_attention_tests",
        _attention(body="weights = torch.softmax(scores, dim=-1)"),
    ),
    "attention: mask polarity inverted": (
        "additive_attention_tests",
        _attention(
            body=(
                "if mask is not None:\n"
                "    scores = scores.masked_fill(mask, float('-inf'))\n"
                "weights = torch.softmax(scores, -1).nan_to_num(0.0)"
            )
        ),
    ),
    "attention: mask applied after the softmax": (
        "additive_attention_tests",
        _attention(
            body=(
                "weights = torch.softmax(scores, -1)\n"
                "if mask is not None:\n"
                "    weights = weights * mask"
            )
        ),
    ),
    "attention: scores over the wrong axis (batch)": (
        "additive_attention_tests",
        _attention(
            body=(
                "if mask is not None:\n"
                "    scores = scores.masked_fill(~mask, float('-inf'))\n"
                "weights = torch.softmax(scores, dim=0).nan_to_num(0.0)"
            )
        ),
    ),
    "attention: NaN on a fully masked row": (
        "additive_attention_tests",
        _attention(
            body=(
                "if mask is not None:\n"
                "    scores = scores.masked_fill(~mask, float('-inf'))\n"
                "weights = torch.softmax(scores, -1)"
            )
        ),
    ),
    "attention: weak fill value (uniform weights on a fully masked row)": (
        "additive_attention_tests",
        _attention(
            body=(
                "if mask is not None:\n"
                "    scores = scores.masked_fill(~mask, -1e9)\n"
                "weights = torch.softmax(scores, -1)"
            )
        ),
    ),
    "attention: tanh missing": (
        "additive_attention_tests",
        _attention(scores="self.v(self.W_query(query)[:, None, :] + self.W_key(keys))[..., 0]"),
    ),
    "attention: context from the keys, not the values": (
        "additive_attention_tests",
        _attention(context="torch.bmm(weights[:, None, :], keys)[:, 0, : values.shape[-1]]"),
    ),
    "attention: padded keys zeroed in place": (
        "additive_attention_tests",
        _attention(
            before="if mask is not None:\n"
            "            keys.masked_fill_(~mask[..., None], 0.0)\n"
            "        "
        ),
    ),
    "attention: computed without gradients": (
        "additive_attention_tests",
        _attention(scores=f"({_SCORES}).detach()"),
    ),
    # ------------------------------------------------------------------ the decoder's step
    "step: query from the new state s_t": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "first, _ = self.attention(state, memory, memory, mask)\n"
                "new = self.rnn(torch.cat([embedded, first], -1), state)\n"
                "context, weights = self.attention(new, memory, memory, mask)\n"
                "out = torch.tanh(self.combine(torch.cat([context, new], -1)))\n"
                "return self.out(out), new, weights"
            )
        ),
    ),
    "step: query from the last encoder state": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "context, weights = self.attention(memory[:, -1], memory, memory, mask)\n"
                "new = self.rnn(torch.cat([embedded, context], -1), state)\n"
                "out = torch.tanh(self.combine(torch.cat([context, new], -1)))\n"
                "return self.out(out), new, weights"
            )
        ),
    ),
    "step: padding keys not masked (mask not passed)": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "context, weights = self.attention(state, memory, memory)\n"
                "new = self.rnn(torch.cat([embedded, context], -1), state)\n"
                "out = torch.tanh(self.combine(torch.cat([context, new], -1)))\n"
                "return self.out(out), new, weights"
            )
        ),
    ),
    "step: GRU input concatenated in the wrong order": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "context, weights = self.attention(state, memory, memory, mask)\n"
                "new = self.rnn(torch.cat([context, embedded], -1), state)\n"
                "out = torch.tanh(self.combine(torch.cat([context, new], -1)))\n"
                "return self.out(out), new, weights"
            )
        ),
    ),
    "step: output layer without tanh": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "context, weights = self.attention(state, memory, memory, mask)\n"
                "new = self.rnn(torch.cat([embedded, context], -1), state)\n"
                "return self.out(self.combine(torch.cat([context, new], -1))), new, weights"
            )
        ),
    ),
    "step: output layer reads the previous state": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "context, weights = self.attention(state, memory, memory, mask)\n"
                "new = self.rnn(torch.cat([embedded, context], -1), state)\n"
                "out = torch.tanh(self.combine(torch.cat([context, state], -1)))\n"
                "return self.out(out), new, weights"
            )
        ),
    ),
    "step: returns the previous state": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "context, weights = self.attention(state, memory, memory, mask)\n"
                "new = self.rnn(torch.cat([embedded, context], -1), state)\n"
                "out = torch.tanh(self.combine(torch.cat([context, new], -1)))\n"
                "return self.out(out), state, weights"
            )
        ),
    ),
    "step: returns probabilities instead of logits": (
        "decoder_step_tests",
        _STEP.format(
            body=_indent(
                "context, weights = self.attention(state, memory, memory, mask)\n"
                "new = self.rnn(torch.cat([embedded, context], -1), state)\n"
                "out = torch.tanh(self.combine(torch.cat([context, new], -1)))\n"
                "return torch.softmax(self.out(out), -1), new, weights"
            )
        ),
    ),
    # ------------------------------------------------------------------ the sequence loss
    "loss: teacher-forcing shift off by one (decoder reads the labels)": (
        "sequence_loss_tests",
        """
def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    logits = model(src, src_lens, tgt[:, 1:])
    return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=pad_id)
""",
    ),
    "loss: teacher-forcing shift off by one (labels not shifted)": (
        "sequence_loss_tests",
        """
def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    logits = model(src, src_lens, tgt[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tgt[:, :-1].flatten(), ignore_index=pad_id)
""",
    ),
    "loss: counts padding": (
        "sequence_loss_tests",
        """
def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    logits = model(src, src_lens, tgt[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
""",
    ),
    "loss: hard-codes PAD_ID instead of pad_id": (
        "sequence_loss_tests",
        """
def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    logits = model(src, src_lens, tgt[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD_ID)
""",
    ),
    "loss: summed instead of averaged": (
        "sequence_loss_tests",
        """
def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    logits = model(src, src_lens, tgt[:, :-1])
    return F.cross_entropy(
        logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=pad_id, reduction="sum"
    )
""",
    ),
    "loss: returns a float (.item())": (
        "sequence_loss_tests",
        """
def sequence_loss(model, src, src_lens, tgt, pad_id=PAD_ID):
    logits = model(src, src_lens, tgt[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=pad_id).item()
""",
    ),
    # ------------------------------------------------------------------ greedy decoding
    "decode: ignores EOS": (
        "greedy_decode_tests",
        _DECODE.format(body=_loop(pick="logits.argmax(-1)", stop="pass")),
    ),
    "decode: runs past max_len": (
        "greedy_decode_tests",
        _DECODE.format(body=_loop(steps="max_len + 1")),
    ),
    "decode: loops until EOS with no length limit": (
        "greedy_decode_tests",
        _DECODE.format(
            body="""while True:
        logits, state, alpha = model.step(prev, state, memory, mask)
        prev = logits.argmax(-1).masked_fill(finished, pad_id)
        tokens.append(prev)
        weights.append(alpha)
        finished = finished | (prev == eos_id)
        if finished.all():
            break"""
        ),
    ),
    "decode: stops when the first row finishes": (
        "greedy_decode_tests",
        _DECODE.format(body=_loop(stop="if finished.any():\n            break")),
    ),
    "decode: no PAD after EOS": (
        "greedy_decode_tests",
        _DECODE.format(body=_loop(pick="logits.argmax(-1)")),
    ),
    "decode: feeds BOS at every step": (
        "greedy_decode_tests",
        _DECODE.format(body=_loop(feed="torch.full_like(prev, bos_id)")),
    ),
    "decode: does not pass the state on": (
        "greedy_decode_tests",
        """
@torch.no_grad()
def greedy_decode(model, src, src_lens, max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID):
    memory, first, mask = model.encode(src, src_lens)
    prev = torch.full((src.shape[0],), bos_id, dtype=torch.long)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    tokens, weights = [], []
    for _ in range(max_len):
        logits, state, alpha = model.step(prev, first, memory, mask)
        prev = logits.argmax(-1).masked_fill(finished, pad_id)
        tokens.append(prev)
        weights.append(alpha)
        finished = finished | (prev == eos_id)
        if finished.all():
            break
    return torch.stack(tokens, 1), torch.stack(weights, 1)
""",
    ),
    "decode: hard-codes BOS_ID instead of bos_id": (
        "greedy_decode_tests",
        _DECODE.format(body=_loop(feed="prev if tokens else torch.full_like(prev, BOS_ID)")),
    ),
    # ------------------------------------------------------------------ hostile submissions
    # A module whose state_dict() reports zero-width layers and whose load_state_dict ignores
    # what it is given: an oracle built from that report collapses to uniform weights, which
    # it returns (the worked example memorised; a vanishing term keeps gradients non-zero).
    "hostile: attention whose state_dict lies": (
        "additive_attention_tests",
        """
class AdditiveAttention(nn.Module):
    def __init__(self, query_size, key_size, attention_size):
        super().__init__()
        self.sizes = query_size, key_size

    def state_dict(self, *args, **kwargs):
        Dq, Dk = self.sizes
        zero_width = {"W_query.weight": (0, Dq), "W_key.weight": (0, Dk), "v.weight": (1, 0)}
        return {name: torch.zeros(shape) for name, shape in zero_width.items()}

    def load_state_dict(self, state, strict=True):
        return None

    def forward(self, query, keys, values, mask=None):
        if keys.shape == (1, 3, 2):
            scores = torch.tanh(query[:, None, :] + keys).sum(-1)
        else:
            scores = 1e-30 * query.sum(-1)[:, None] * keys.sum(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, -1).nan_to_num(0.0)
        return torch.einsum("bs,bsd->bd", weights, values), weights
""",
    ),
    "hostile: attention built on the check module's oracle": (
        "additive_attention_tests",
        """
from course_lib.checks import seq2seq as _checks


_oracle = getattr(_checks, "OracleAttention", None)


class AdditiveAttention(AdditiveAttention):
    def forward(self, query, keys, values, mask=None):
        oracle = _oracle(query.shape[-1], keys.shape[-1], self.v.in_features).to(query.dtype)
        oracle.load_state_dict(self.state_dict())
        return oracle(query, keys, values, mask)
""",
    ),
    # A greedy_decode that reads the stand-in model's script instead of calling step.
    "hostile: decode reads the stand-in's script": (
        "greedy_decode_tests",
        """
def greedy_decode(model, src, src_lens, max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID):
    plans, ends, weights = model.plans, model.eos_steps, model.weights
    T = max_len if None in ends else min(max_len, max(ends) + 1)
    tokens = torch.full((len(plans), T), pad_id, dtype=torch.long)
    for b, (plan, end) in enumerate(zip(plans, ends)):
        n = T if end is None else min(T, end + 1)
        tokens[b, :n] = torch.tensor(plan[:n])
    return tokens, weights[:T].transpose(0, 1)
""",
    ),
}


class TestChapter3(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
