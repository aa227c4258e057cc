"""Checks for chapter 3: additive attention, the attention decoder's step, the padding-aware
sequence loss and greedy decoding.

Oracles never come from course_lib's reference. Additive attention and the decoder step are
recomputed here by hand in float64 (the score ``vᵀ tanh(W_q q + W_k k)``, a GRU cell written
out gate by gate) from parameters the check draws itself and loads strictly into the student's
module, never from what the module reports; the loss is compared with
``F.cross_entropy(..., ignore_index=pad_id)``. Every call hands the student's code private
copies of its inputs (verified unchanged after the call). Each exercise is graded on its own:
the step runs with a stand-in in place of ``self.attention`` that answers only the one call a
correct step makes, and the loss and greedy decoding run against scripted stand-in models.

No importable code computes an exercise's answer: the attention stand-in holds the answer for
its probe's inputs only, and computes nothing. The stand-ins expose only the interface they
stand in for (their script is name-mangled private, which the trusted grader never serves),
and verify what they are given themselves, raising :class:`CheckFailed` on the spot. So the
checks work the same when the student's code runs in another process, as under the trusted
grading command, where the torch modules among them travel to that process by value.

Likely bugs are recognised by recomputing, on the same inputs, what each known bug produces:
a wrong answer that equals one of them is named in the failure message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks.core import (
    CheckFailed,
    as_tensor,
    expect,
    expect_close,
    expect_copies_unchanged,
    expect_shape,
    generator,
    load_parameters,
    parameter_values,
    private_copies,
    randn,
    run,
    valid_lengths,
)

F64 = torch.float64
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def _mask(lengths: Sequence[int], S: int) -> torch.Tensor:
    """True = may attend: key j of row b is real when j < lengths[b]."""
    return torch.arange(S)[None, :] < torch.tensor(list(lengths))[:, None]  # (B, S)


# ------------------------------------------------------------------------ additive attention


def _on_copies(fn, inputs: dict, grad: tuple[str, ...] = ()):
    """``fn`` on private copies of ``inputs`` (positionally, in order; those named in ``grad``
    made leaves that require grad), checked unchanged after; returns the result and the
    copies."""
    copies = private_copies(inputs)
    for name in grad:
        copies[name].requires_grad_()
    result = fn(*copies.values())
    expect_copies_unchanged(inputs, copies)
    return result, copies


def _call_attention(module, query, keys, values, mask, grad: tuple[str, ...] = ()):
    inputs = {"query": query, "keys": keys, "values": values, "mask": mask}
    result, copies = _on_copies(module, inputs, grad)
    expect(
        isinstance(result, tuple) and len(result) == 2,
        "forward must return a tuple (context, weights)",
    )
    return (result, copies) if grad else result


def check_additive_attention(
    cls, B=2, S=5, Dq=3, Dk=4, Dv=4, A=6, dtype=torch.float32, seed=0
) -> None:
    """``cls(query_size, key_size, attention_size)`` computes Bahdanau's additive attention."""

    gen = generator(seed)
    shapes = {"W_query.weight": (A, Dq), "W_key.weight": (A, Dk), "v.weight": (1, A)}
    state = parameter_values(gen, shapes, dtype)
    module = cls(Dq, Dk, A).to(dtype)
    load_parameters(module, state, "your AdditiveAttention")
    Wq, Wk, v = (state[name].double() for name in shapes)
    query, keys = randn(gen, B, Dq, dtype=dtype), randn(gen, B, S, Dk, dtype=dtype)
    values = randn(gen, B, S, Dv, dtype=dtype)
    lengths = valid_lengths(B, S)
    mask = _mask(lengths, S)
    # The oracle is computed here, inline: nothing importable computes additive attention.
    projected = (query.double() @ Wq.T)[:, None, :] + keys.double() @ Wk.T  # (B, S, A)
    scores = torch.tanh(projected) @ v.reshape(-1)  # e[b, j] = vᵀ tanh(W_q q_b + W_k k_bj)
    weights = torch.softmax(scores, -1)
    masked = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)  # every row has a key
    no_tanh = projected @ v.reshape(-1)

    def worked_example():
        small = cls(2, 2, 2).double()
        eye = torch.eye(2, dtype=F64)
        identity = {"W_query.weight": eye, "W_key.weight": eye, "v.weight": torch.ones(1, 2)}
        load_parameters(small, identity, "your AdditiveAttention")
        q = torch.tensor([[0.7, 0.3]], dtype=F64)
        k = torch.tensor([[[0.8, 0.2], [0.1, 0.9], [0.5, 0.5]]], dtype=F64)
        by_hand = [math.tanh(0.7 + a) + math.tanh(0.3 + b) for a, b in k[0].tolist()]
        expected = torch.softmax(torch.tensor([by_hand], dtype=F64), -1)
        _, got = _call_attention(small, q, k, k, None)
        expect_close(
            got,
            expected,
            "the weights for query (0.7, 0.3) with W_q = W_k = I, v = (1, 1) "
            f"(scores by hand: {', '.join(f'{s:.3f}' for s in by_hand)})",
            {
                "tanh is missing: the score is vᵀ tanh(W_q q + W_k k)": torch.softmax(
                    (q[:, None, :] + k).sum(-1), -1
                ),
                "the scores were returned without the softmax": torch.tensor([by_hand]),
                "the softmax was taken over the batch axis (dim 0), not over the keys "
                "(dim=-1)": torch.ones(1, 3),
            },
        )

    def matches_bahdanau():
        context, got = _call_attention(module, query, keys, values, None)
        expect(
            tuple(getattr(got, "shape", ())) != (S, B) or B == S,
            f"weights have shape (S, B) = {(S, B)}, expected (B, S) = {(B, S)}",
        )
        expect_close(
            got,
            weights,
            f"weights (B={B}, S={S}, no mask)",
            {
                "the softmax was taken over the batch axis (dim 0), not over the keys (dim=-1)": (
                    torch.softmax(scores, 0)
                ),
                "tanh is missing: the score is vᵀ tanh(W_q q + W_k k)": torch.softmax(no_tanh, -1),
                "the scores were returned without the softmax": scores,
                "the scores were scaled by 1/sqrt(A) (additive attention has no scaling)": (
                    torch.softmax(scores / math.sqrt(A), -1)
                ),
            },
        )
        sums = got.double().sum(-1)
        expect(
            torch.allclose(sums, torch.ones_like(sums), atol=1e-5),
            "each row of weights must sum to 1 over the keys (dim=-1)",
        )
        expect(got.dtype == dtype, f"weights have dtype {got.dtype}, expected {dtype}")
        expect(context.dtype == dtype, f"context has dtype {context.dtype}, expected {dtype}")

    def context_is_weighted_values():
        context, _ = _call_attention(module, query, keys, values, None)
        likely = {
            "the values were summed without the weights": values.double().sum(1),
            "the values were averaged without the weights": values.double().mean(1),
        }
        if Dk == Dv:
            likely["the context averages the keys, not the values"] = torch.einsum(
                "bs,bsd->bd", weights, keys.double()
            )
        expect_close(
            context,
            torch.einsum("bs,bsd->bd", weights, values.double()),
            f"context (B, Dv) = {(B, Dv)}",
            likely,
        )

    def padding_keys_get_zero_weight():
        context, got = _call_attention(module, query, keys, values, mask)
        expect_shape(got, (B, S), "weights")
        leaked = got.detach()[~mask]
        if bool((leaked != 0).any()):
            if bool((got.detach()[mask] == 0).all()):
                raise CheckFailed(
                    "padding keys get weight and real keys none: the mask looks inverted "
                    "(True means may attend)"
                )
            raise CheckFailed(
                "padding keys (mask False) get non-zero weight: fill their scores with -inf "
                "before the softmax (scores.masked_fill(~mask, float('-inf')))"
            )
        expect_close(
            got,
            masked,
            f"weights with valid lengths {lengths}",
            {
                "the mask was applied after the softmax (weights of real keys no longer "
                "sum to 1): mask the scores, then take the softmax": weights * mask,
            },
        )
        expect_close(
            context,
            torch.einsum("bs,bsd->bd", masked, values.double()),
            f"context with valid lengths {lengths}",
        )

    def padded_positions_change_nothing():
        noisy_keys, noisy_values = keys.clone(), values.clone()
        noisy_keys[~mask] = 100.0
        noisy_values[~mask] = -100.0
        context, got = _call_attention(module, query, noisy_keys, noisy_values, mask)
        expect_close(got, masked, "weights after changing the padded keys")
        expect_close(
            context,
            torch.einsum("bs,bsd->bd", masked, values.double()),
            "context after changing the padded keys and values (padding must not leak in)",
        )

    def row_without_keys():
        empty = mask.clone()
        empty[-1] = False  # the last row may attend to nothing
        context, got = _call_attention(module, query, keys, values, empty)
        expect(
            bool(torch.isfinite(got).all()) and bool(torch.isfinite(context).all()),
            "a row whose keys are all masked gives NaN (softmax of all -inf): return zero "
            "weights and a zero context for such a row, as "
            "F.scaled_dot_product_attention does (e.g. zero the masked weights after the softmax)",
        )
        expect(
            bool((got[-1] == 0).all()) and bool((context[-1] == 0).all()),
            "a row whose keys are all masked must get zero weights and a zero context "
            f"(got weights {got[-1].tolist()})",
        )
        expect_close(got[:-1], masked[:-1], "the other rows' weights")

    def differentiable():
        grad = ("query", "keys", "values")
        (context, got), copies = _call_attention(module, query, keys, values, mask, grad)
        q, k, val = (copies[name] for name in grad)
        expect(
            context.requires_grad and got.requires_grad,
            "the context and weights do not require grad: compute them with the module's "
            "layers and without torch.no_grad(), .detach() or .data, so training can learn",
        )
        (context.sum() + (got * torch.arange(S, dtype=dtype)).sum()).backward()
        for name, t in (("query", q), ("keys", k), ("values", val)):
            expect(
                t.grad is not None and bool(t.grad.abs().sum() > 0),
                f"no gradient flows back to the {name}: compute without torch.no_grad(), "
                ".detach() or .data",
            )

    run(
        "AdditiveAttention",
        {
            "the worked example: scores tanh(q + k) summed, then softmax": worked_example,
            f"weights are softmax(vᵀ tanh(W_q q + W_k k)) over the keys ({dtype})": (
                matches_bahdanau
            ),
            "the context is the weighted sum of the values": context_is_weighted_values,
            "padding keys (mask False) get exactly zero weight": padding_keys_get_zero_weight,
            "changing padded keys and values changes nothing": padded_positions_change_nothing,
            "a row with no allowed key returns zeros, not NaN": row_without_keys,
            "gradients flow back to the query, keys and values": differentiable,
        },
    )


# ----------------------------------------------------------------------- the decoder's step


class AttentionStandIn(nn.Module):
    """Stands in for the decoder's ``self.attention`` while the step is graded: it answers
    only the call a correct step makes in its probe (query = the previous state, keys = values
    = the encoder states, the padding mask), with the context and weights the check computed,
    and refuses any other call with the diagnosis. It holds no parameters and computes no
    attention, so it is no solution to the attention exercise."""

    def __init__(self, state, memory, mask, context, weights):
        super().__init__()
        # its own copies, and copies handed out: nothing the student's code does to what it
        # gets can reach the check's tensors
        self.__expected = {"state": state.clone(), "memory": memory.clone(), "mask": mask.clone()}
        self.__answer = (context.clone(), weights.clone())

    def forward(self, query, keys, values, mask=None):
        state, memory = self.__expected["state"], self.__expected["memory"]
        if not isinstance(query, torch.Tensor) or query.shape != state.shape:
            shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query)
            hint = (
                ": that is the width of the encoder states — the query must be the previous "
                "decoder state s_{t-1} (the `state` argument)"
                if isinstance(query, torch.Tensor) and query.shape[-1:] == memory.shape[-1:]
                else ""
            )
            raise CheckFailed(
                f"the attention was called with a query of shape {shape}, expected the "
                f"decoder state {tuple(state.shape)}{hint}"
            )
        if not torch.allclose(query.detach().double(), state.double(), atol=1e-6):
            raise CheckFailed(
                "the attention's query is not the previous decoder state s_{t-1}: pass the "
                "`state` argument as the query, before the GRU updates the state"
            )
        for name, given in (("keys", keys), ("values", values)):
            expect(
                isinstance(given, torch.Tensor)
                and given.shape == memory.shape
                and bool(torch.equal(given.detach(), memory)),
                f"the attention's {name} must be the encoder states `memory`",
            )
        expect(
            mask is not None,
            "the padding mask was not passed to the attention: padded source positions "
            "would get weight (pass `mask`)",
        )
        expected_mask = self.__expected["mask"]
        expect(
            isinstance(mask, torch.Tensor)
            and mask.shape == expected_mask.shape
            and bool(torch.equal(mask, expected_mask)),
            "the attention got a different mask than the step's `mask`",
        )
        context, weights = self.__answer
        return context.to(values.dtype, copy=True), weights.to(values.dtype, copy=True)


def _gru_cell(x, h, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """PyTorch's GRU cell, gate by gate (r, z, n stacked in that order)."""
    gi = x @ w_ih.T + b_ih  # (B, 3D)
    gh = h @ w_hh.T + b_hh
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def check_decoder_step(cls, B=2, S=5, V=7, E=3, Dk=6, D=4, A=5, dtype=torch.float32, seed=0):
    """``cls(vocab_size, embed_size, memory_size, hidden_size, attention_size).step``."""
    gen = generator(seed)
    decoder = cls(V, E, Dk, D, A)
    for name in ("embedding", "attention", "rnn", "combine", "out"):
        expect(
            hasattr(decoder, name),
            f"the decoder has no layer {name!r}: keep the layers that __init__ creates "
            "(the checks set their weights)",
        )
    layer_shapes = {
        "embedding.weight": (V, E),
        "rnn.weight_ih": (3 * D, E + Dk),
        "rnn.weight_hh": (3 * D, D),
        "rnn.bias_ih": (3 * D,),
        "rnn.bias_hh": (3 * D,),
        "combine.weight": (D, Dk + D),
        "combine.bias": (D,),
        "out.weight": (V, D),
        "out.bias": (V,),
    }
    state_dict = parameter_values(gen, layer_shapes, dtype)
    p = {name: t.double() for name, t in state_dict.items()}
    emb = p["embedding.weight"]
    rnn = [p[f"rnn.{n}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    Wc, bc, Wo, bo = p["combine.weight"], p["combine.bias"], p["out.weight"], p["out.bias"]

    prev = torch.randint(3, V, (B,), generator=gen)
    prev[0] = BOS_ID  # the first step of a sequence
    state = randn(gen, B, D, dtype=dtype)
    memory = randn(gen, B, S, Dk, dtype=dtype)
    lengths = valid_lengths(B, S)
    mask = _mask(lengths, S)

    x = emb[prev]  # (B, E)
    s_prev = state.double()
    # any attention distribution over the real keys will do: the stand-in returns it
    alpha = torch.softmax(randn(gen, B, S, dtype=F64).masked_fill(~mask, float("-inf")), -1)
    context = torch.einsum("bs,bsd->bd", alpha, memory.double())
    s_new = _gru_cell(torch.cat([x, context], -1), s_prev, *rnn)
    logits = torch.tanh(torch.cat([context, s_new], -1) @ Wc.T + bc) @ Wo.T + bo
    # the student's own attention is graded on its own: this one answers the probe's call
    decoder.attention = AttentionStandIn(state, memory, mask, context, alpha)
    decoder = decoder.to(dtype)
    load_parameters(decoder, state_dict, "your AttentionDecoder")

    def readout(ctx, s, tanh=True):
        hidden = torch.cat([ctx, s], -1) @ Wc.T + bc
        return (torch.tanh(hidden) if tanh else hidden) @ Wo.T + bo

    def call(grad: tuple[str, ...] = ()):
        inputs = {"prev": prev, "state": state, "memory": memory, "mask": mask}
        result, copies = _on_copies(decoder.step, inputs, grad)
        expect(
            isinstance(result, tuple) and len(result) == 3,
            "step must return a tuple (logits, state, weights)",
        )
        return (result, copies) if grad else result

    def shapes():
        got_logits, got_state, got_weights = call()
        expect_shape(got_logits, (B, V), "logits")
        expect_shape(got_state, (B, D), "the new state")
        expect_shape(got_weights, (B, S), "weights")

    def attention_called_right():
        call()  # the stand-in checks the query, keys, values and mask itself

    def new_state():
        _, got, _ = call()
        expect_close(
            got,
            s_new,
            "the new state s_t = GRU([E y_{t-1}; a_t], s_{t-1})",
            {
                "the previous state was returned: return the GRU's new state s_t": s_prev,
                "the GRU input was concatenated as [a_t; E y_{t-1}] instead of "
                "[E y_{t-1}; a_t]": _gru_cell(torch.cat([context, x], -1), s_prev, *rnn),
            },
        )
        expect(got.dtype == dtype, f"the new state has dtype {got.dtype}, expected {dtype}")

    def output_layer():
        got, _, _ = call()
        expect_close(
            got,
            logits,
            "logits = W_o tanh(W_c [a_t; s_t] + b_c) + b_o",
            {
                "tanh is missing in the output layer: tanh(W_c [a_t; s_t])": readout(
                    context, s_new, tanh=False
                ),
                "the output layer concatenates [s_t; a_t] instead of [a_t; s_t]": (
                    torch.tanh(torch.cat([s_new, context], -1) @ Wc.T + bc) @ Wo.T + bo
                ),
                "the output layer uses the previous state s_{t-1} instead of s_t": readout(
                    context, s_prev
                ),
                "the combine layer W_c was skipped (logits = W_o s_t)": s_new @ Wo.T + bo,
                "softmax probabilities were returned instead of logits": torch.softmax(logits, -1),
            },
        )

    def returns_attention_weights():
        _, _, got = call()
        expect_close(got, alpha, "weights (the attention distribution α_t over the source)")

    def differentiable():
        (got_logits, got_state, _), copies = call(grad=("state",))
        s0 = copies["state"]
        expect(
            got_logits.requires_grad and got_state.requires_grad,
            "the logits and the new state do not require grad: use the decoder's layers, "
            "without torch.no_grad() or .detach(), so training can learn",
        )
        (got_logits.sum() + got_state.sum()).backward()
        expect(
            s0.grad is not None and bool(s0.grad.abs().sum() > 0),
            "no gradient flows back to the previous state: backpropagation through time "
            "needs it (do not detach the state)",
        )

    run(
        "AttentionDecoder.step",
        {
            f"returns logits (B, V), state (B, D), weights (B, S) for B={B}, S={S}": shapes,
            "attends with query s_{t-1}, keys = values = memory, and the mask": (
                attention_called_right
            ),
            "the new state is GRU([E y_{t-1}; a_t], s_{t-1})": new_state,
            "logits are W_o tanh(W_c [a_t; s_t])": output_layer,
            "returns the attention weights α_t": returns_attention_weights,
            "gradients flow back through the step": differentiable,
        },
    )


# ----------------------------------------------------------------------- the sequence loss


class ScriptedModel(nn.Module):
    """A stand-in seq2seq model for the loss: its logits depend on each decoder input token
    and position (``by_token[token] + by_position[t]``), so feeding the wrong tokens changes
    the loss. It checks its decoder input against the target it was built for, and fails with
    the diagnosis if it is not ``tgt[:, :-1]``. Called once: a fresh one for every call."""

    def __init__(self, tgt: torch.Tensor, by_token: torch.Tensor, by_position: torch.Tensor):
        super().__init__()
        self.__tgt = tgt.clone()
        self.by_token = nn.Parameter(by_token.clone())
        self.by_position = nn.Parameter(by_position.clone())
        self.__called = False

    def forward(self, src, src_lens, tgt_in):
        if self.__called:
            raise CheckFailed("the model was called more than once: one call gives every step")
        self.__called = True
        if not isinstance(tgt_in, torch.Tensor) or tgt_in.dim() != 2:
            raise CheckFailed("the model must be called as model(src, src_lens, decoder_input)")
        tgt = self.__tgt
        if tgt_in.shape == tgt[:, 1:].shape and torch.equal(tgt_in, tgt[:, 1:]):
            raise CheckFailed(
                "teacher-forcing shift off by one: the decoder reads tgt[:, 1:], the very "
                "tokens it must predict. It reads tgt[:, :-1] (BOS first) and predicts "
                "tgt[:, 1:]"
            )
        if tgt_in.shape == tgt.shape and torch.equal(tgt_in, tgt):
            raise CheckFailed(
                "the decoder was given the whole target: it reads tgt[:, :-1] (BOS first, "
                "the last token dropped) and predicts tgt[:, 1:]"
            )
        if tgt_in.shape != tgt[:, :-1].shape or not torch.equal(tgt_in, tgt[:, :-1]):
            raise CheckFailed("the decoder input must be tgt[:, :-1]: BOS, y_1, …, y_{L-1}")
        return self.by_token[tgt_in] + self.by_position[: tgt_in.shape[1]]  # (B, L, V)


def _targets(gen, lengths: Sequence[int], V: int, pad_id: int, special: set[int]):
    """BOS y1..yn EOS then pad_id: rows of ``lengths`` tokens (BOS and EOS included)."""
    ordinary = torch.tensor([i for i in range(V) if i not in special])
    tgt = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    for b, n in enumerate(lengths):
        tgt[b, 0] = BOS_ID
        tgt[b, 1 : n - 1] = ordinary[torch.randint(len(ordinary), (n - 2,), generator=gen)]
        tgt[b, n - 1] = EOS_ID
    return tgt


def check_sequence_loss(fn, B=3, L=6, V=9, S=4, pad_id=PAD_ID, dtype=torch.float32, seed=0):
    """``fn(model, src, src_lens, tgt, pad_id)``: teacher-forced token-mean cross-entropy."""
    gen = generator(seed)
    lengths = [L + 1] + [max(3, L + 1 - 2 * b) for b in range(1, B)]  # BOS ... EOS per row
    tgt = _targets(gen, lengths, V, pad_id, {PAD_ID, BOS_ID, EOS_ID, pad_id})  # (B, L + 1)
    src = torch.randint(3, V, (B, S), generator=gen)
    src_lens = torch.tensor(valid_lengths(B, S))
    # the stand-in's logits, drawn here: the oracle uses these, never the model's state
    by_token = randn(gen, V, V, dtype=dtype) * 2
    by_position = randn(gen, L + 1, V, dtype=dtype)

    def logits_for(tokens):
        return by_token.double()[tokens] + by_position.double()[: tokens.shape[1]]

    def ce(logits, labels, ignore=True):
        flat = logits.reshape(-1, logits.shape[-1])
        if ignore:
            return F.cross_entropy(flat, labels.reshape(-1), ignore_index=pad_id)
        return F.cross_entropy(flat, labels.reshape(-1))

    inputs, labels = tgt[:, :-1], tgt[:, 1:]  # (B, L) each
    expected = ce(logits_for(inputs), labels)
    per_token = F.cross_entropy(
        logits_for(inputs).reshape(-1, V), labels.reshape(-1), reduction="none"
    ).reshape(B, L)
    real = labels != pad_id
    per_sequence = ((per_token * real).sum(1) / real.sum(1)).mean()

    def call(token_logits=by_token):
        model = ScriptedModel(tgt, token_logits, by_position)
        inputs = {"src": src, "src_lens": src_lens, "tgt": tgt}
        got, _ = _on_copies(lambda *args: fn(model, *args, pad_id=pad_id), inputs)
        expect(
            not isinstance(got, float | int),
            "the loss is a Python number: return the tensor (not .item()), so training "
            "can backpropagate through it",
        )
        return as_tensor(got, "the loss")

    def decoder_reads_shifted_targets():
        call()  # the stand-in model checks its input itself

    def matches_cross_entropy():
        got = call()
        expect(got.dim() == 0, f"the loss must be a scalar tensor, got shape {tuple(got.shape)}")
        expect_close(
            got,
            expected,
            f"the loss (valid target lengths {[n - 1 for n in lengths]} after BOS)",
            {
                "padding was counted: pass ignore_index=pad_id so PAD targets cost nothing": ce(
                    logits_for(inputs), labels, ignore=False
                ),
                "teacher-forcing shift off by one: the labels are tgt[:, :-1] (each step "
                "predicts the token it was just given), they must be tgt[:, 1:]": ce(
                    logits_for(inputs), inputs
                ),
                "the losses were summed, not averaged over the real tokens": per_token[real].sum(),
                "the loss averages per-sequence means: average over all real tokens instead": (
                    per_sequence
                ),
            },
            atol=1e-4,
        )

    def backpropagates():
        got = call()
        expect(
            got.requires_grad,
            "the loss does not require grad: do not detach it, or training cannot backpropagate",
        )
        got.backward()

    def padding_costs_nothing():
        got_before = call().detach()
        # A PAD input token is only ever fed at steps whose label is PAD too: changing its
        # logits changes the predictions at padded steps only.
        shifted = by_token.clone()
        shifted[pad_id] += 5.0
        got_after = call(shifted)
        expect(
            torch.allclose(got_before.double(), got_after.detach().double(), atol=1e-5),
            "the loss changed when only the predictions at padded positions changed: "
            "padding must not count (ignore_index=pad_id)",
        )

    run(
        "sequence_loss",
        {
            "the decoder reads tgt[:, :-1], BOS first": decoder_reads_shifted_targets,
            "equals F.cross_entropy over tgt[:, 1:] with ignore_index=pad_id": (
                matches_cross_entropy
            ),
            "returns a scalar that backpropagates": backpropagates,
            "predictions at padded positions cost nothing": padding_costs_nothing,
        },
    )


# ----------------------------------------------------------------------- greedy decoding


class ScriptedDecoder:
    """A stand-in model for greedy decoding: step t of row b emits ``plans[b][t]``, whatever
    it is fed, and checks on the spot what it is fed.

    A row keeps emitting ordinary tokens after its EOS, so a decoder that ignores EOS is
    caught by its output. The state is a step counter, so a state not passed on is caught; and
    it refuses to run more than ``limit`` steps. Step t returns ``weights[t]`` as its attention
    weights. Only ``encode`` and ``step`` are public: the interface it stands in for.
    """

    def __init__(self, plans, eos_steps, V, limit, bos_id, memory, mask, weights):
        # name-mangled private: a greedy_decode that reads the script instead of calling step
        # finds nothing (and the trusted grader serves no private attribute)
        self.__plans, self.__eos_steps, self.__V, self.__limit = plans, eos_steps, V, limit
        self.__bos_id = bos_id
        self.__B = len(plans)
        self.__memory, self.__mask, self.__weights = memory, mask, weights
        self.__encoded = 0
        self.__steps = 0

    @property
    def decoder(self):
        raise CheckFailed(
            "call model.step(prev, state, memory, mask), not model.decoder.step: "
            "greedy_decode works with any model that has encode and step"
        )

    def encode(self, src, src_lens):
        self.__encoded += 1
        if self.__encoded > 1:
            raise CheckFailed("model.encode was called more than once: encode once, then loop")
        return self.__memory, torch.zeros(self.__B, 1), self.__mask

    def step(self, prev, state, memory, mask):
        t = self.__steps
        if t >= self.__limit:
            raise CheckFailed(
                f"decoding ran past max_len: step was called more than {self.__limit} times"
            )
        if self.__encoded != 1:
            raise CheckFailed("call model.encode(src, src_lens) once, before the first step")
        if not isinstance(prev, torch.Tensor) or tuple(prev.shape) != (self.__B,):
            shape = tuple(prev.shape) if isinstance(prev, torch.Tensor) else type(prev).__name__
            raise CheckFailed(f"step got prev of shape {shape}, expected one token per row (B,)")
        if not (isinstance(state, torch.Tensor) and bool((state == t).all())):
            raise CheckFailed(
                f"at step {t} the model got a state that is not the one the previous step "
                "returned: pass each step's new state to the next step"
            )
        if not (torch.equal(memory, self.__memory) and torch.equal(mask, self.__mask)):
            raise CheckFailed("pass the memory and mask that model.encode returned to every step")
        for b in range(self.__B):
            fed = int(prev[b])
            if t == 0 and fed != self.__bos_id:
                raise CheckFailed(
                    f"the first decoder input must be bos_id={self.__bos_id} for every row, "
                    f"got {prev.tolist()}"
                )
            running = self.__eos_steps[b] is None or self.__eos_steps[b] >= t
            if t > 0 and running and fed != self.__plans[b][t - 1]:
                raise CheckFailed(
                    f"at step {t} row {b} was fed token {fed}, but the previous step's most "
                    f"likely token was {self.__plans[b][t - 1]}: feed back the argmax of the "
                    "logits (greedy decoding)"
                )
        logits = torch.zeros(self.__B, self.__V)
        for b, plan in enumerate(self.__plans):
            logits[b, plan[t]] = 5.0
        logits[:, 3] = 1.0  # a runner-up, so the argmax is what matters, not the max value
        self.__steps += 1
        return logits, state + 1, self.__weights[t].clone()  # a copy: the check keeps its own


def check_greedy_decode(
    fn, B=3, S=4, V=10, max_len=7, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, seed=0
) -> None:
    """``fn(model, src, src_lens, max_len, bos_id, eos_id, pad_id) -> (tokens, weights)``."""
    gen = generator(seed)
    specials = {bos_id, eos_id, pad_id, 3}
    ordinary = [i for i in range(4, V) if i not in specials]
    src = torch.randint(4, V, (B, S), generator=gen)
    src_lens = torch.tensor(valid_lengths(B, S))
    # Row b emits EOS at step finishing[b]; every row finishes before max_len ...
    finishing = ([1, max_len - 3, 3] + [2] * B)[:B]
    # ... or row 1 never emits EOS.
    never = ([2, None] + [1] * B)[:B]

    def decode(eos_steps, limit):
        plans = []
        for e in eos_steps:
            picks = torch.randint(len(ordinary), (max_len + 3,), generator=gen).tolist()
            plan = [ordinary[i] for i in picks]
            if e is not None:
                plan[e] = eos_id
            plans.append(plan)
        memory = torch.randn(B, S, 5, generator=gen)
        weights = torch.softmax(torch.randn(limit, B, S, generator=gen), -1)
        model = ScriptedDecoder(
            plans, eos_steps, V, limit, bos_id, memory, torch.ones(B, S, dtype=torch.bool), weights
        )
        result, _ = _on_copies(
            lambda *args: fn(model, *args, max_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id),
            {"src": src, "src_lens": src_lens},
        )
        expect(
            isinstance(result, tuple) and len(result) == 2,
            "greedy_decode must return a tuple (tokens, weights)",
        )
        tokens = as_tensor(result[0], "tokens")
        expect(tokens.dtype == torch.long, f"tokens have dtype {tokens.dtype}, expected long")
        return weights, plans, tokens, as_tensor(result[1], "weights")

    def expected_tokens(plans, eos_steps, T):
        out = torch.full((B, T), pad_id, dtype=torch.long)
        for b, (plan, e) in enumerate(zip(plans, eos_steps, strict=True)):
            n = T if e is None else min(T, e + 1)
            out[b, :n] = torch.tensor(plan[:n])
        return out

    def feeds_itself():
        decode(finishing, max_len)  # the stand-in checks BOS, argmax feedback and the state

    def stops_at_eos():
        script, plans, tokens, weights = decode(finishing, max_len)
        T = max(finishing) + 1
        want = expected_tokens(plans, finishing, T)
        raw = torch.tensor([plan[: tokens.shape[1]] for plan in plans])
        if tokens.shape == raw.shape and torch.equal(tokens, raw) and tokens.shape[1] > T:
            raise CheckFailed(
                "decoding ignores EOS: rows go on after emitting EOS and the loop runs to "
                "max_len. After a row's EOS write pad_id, and stop once every row has finished"
            )
        expect(
            tokens.shape[1] <= max_len,
            f"tokens have {tokens.shape[1]} steps, more than max_len={max_len}",
        )
        if tokens.shape == want.shape and not torch.equal(tokens, want):
            raise CheckFailed(
                f"tokens should be {want.tolist()} (each row up to its EOS, then "
                f"pad_id={pad_id}); got {tokens.tolist()}"
            )
        expect(
            tokens.shape == want.shape,
            f"every row has emitted EOS after {T} steps, so tokens should have shape "
            f"{tuple(want.shape)}; got {tuple(tokens.shape)}: stop as soon as every row has "
            "finished",
        )
        expect_close(
            weights,
            script[:T].transpose(0, 1),
            f"weights: each step's weights stacked on dim 1, shape (B, T, S) = {(B, T, S)}",
        )

    def never_past_max_len():
        try:
            _, plans, tokens, _ = decode(never, max_len)
        except CheckFailed as failure:
            if "ran past max_len" in str(failure):
                raise CheckFailed(
                    f"decoding ran past max_len={max_len} when a row never emits EOS: "
                    "loop at most max_len times (for _ in range(max_len))"
                ) from None
            raise
        expect(
            tokens.shape == (B, max_len),
            f"a row never emits EOS, so tokens should have shape {(B, max_len)} "
            f"(exactly max_len steps); got {tuple(tokens.shape)}",
        )
        want = expected_tokens(plans, never, max_len)
        expect(
            torch.equal(tokens, want),
            f"tokens should be {want.tolist()}, got {tokens.tolist()}",
        )

    run(
        "greedy_decode",
        {
            f"starts from bos_id={bos_id}, feeds back each argmax, passes the state on": (
                feeds_itself
            ),
            "rows hold pad_id after their EOS; decoding stops once all have finished": (
                stops_at_eos
            ),
            f"never more than max_len={max_len} steps": never_past_max_len,
        },
    )
