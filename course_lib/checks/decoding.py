"""Checks for chapter 8, part 1: the key-value cache, cached self-attention, the cached decoder.

Written to the rules for check code of the course design: every call hands the student's code
private copies and verifies they come back unchanged; parameters are drawn here and loaded
with ``load_state_dict``; no function here computes an exercise's answer for arguments of
one's choosing. The expected attention of each probe is recomputed inline, in float64, from
the check's own parameter values; the cached decoder is compared with full decoding by chapter
6's ``Transformer`` (a float64 copy holding the same weights), with the tokens forced.

While ``CachedTransformer`` is graded, :class:`StandInCache` (only ``append`` and ``len``)
and a stand-in for ``cached_self_attention`` that accepts only the self-attention modules of
the probe's model replace the student's, so one bug is never charged twice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from course_lib.checks.core import (
    CheckFailed,
    as_tensor,
    call_on_copies,
    expect,
    expect_close,
    expect_copies_unchanged,
    expect_shape,
    generator,
    graded_alone,
    load_parameters,
    parameter_values,
    private_copies,
    randn,
    real_positions,
    run,
)

F64 = torch.float64


# ------------------------------------------------------------------------------ KVCache


def check_kv_cache(cls, B=2, H=2, Dh=3, Dv=4, chunks=(1, 1, 2), dtype=torch.float32, seed=0):
    """``cls()`` is empty; ``append(key, value)`` concatenates along the time axis (dim 2)."""
    gen = generator(seed)
    keys = [randn(gen, B, H, n, Dh, dtype=dtype) for n in chunks]
    values = [randn(gen, B, H, n, Dv, dtype=dtype) for n in chunks]
    itemsize = torch.empty((), dtype=dtype).element_size()

    def expect_all(got, parts, what, i):
        expected = torch.cat(parts[: i + 1], dim=2)  # (B, H, t, ·)
        got = as_tensor(got, what)
        shape = tuple(got.shape)
        if shape != tuple(expected.shape):
            hint = ""
            if shape == tuple(parts[i].shape):
                hint = ": append returns only the new positions; return all cached ones"
            elif shape[0] != B or shape[1] != H:
                hint = ": concatenated along the wrong axis; the time axis is dim=2"
            raise CheckFailed(f"{what} has shape {shape}, expected {tuple(expected.shape)}{hint}")
        older_last = torch.cat(parts[: i + 1][::-1], dim=2)
        expect_close(
            got,
            expected,
            what,
            {"the new positions before the old ones: old first, cat([self.keys, key])": older_last},
        )

    def appends():
        cache = cls()
        expect(len(cache) == 0, f"a new cache has len {len(cache)}, expected 0")
        expect(cache.nbytes == 0, f"a new cache has nbytes {cache.nbytes}, expected 0")
        handed = []  # (originals, copies) of every call, checked after every later call too
        t = 0
        for i in range(len(chunks)):
            originals = {"key": keys[i], "value": values[i]}
            copies = private_copies(originals)
            result = cache.append(copies["key"], copies["value"])
            handed.append((originals, copies))
            for before, after in handed:
                expect_copies_unchanged(before, after)
            expect(
                isinstance(result, tuple) and len(result) == 2,
                "append must return (keys, values), all positions so far",
            )
            t += chunks[i]
            expect_all(result[0], keys, f"the keys returned by append number {i + 1}", i)
            expect_all(result[1], values, f"the values returned by append number {i + 1}", i)
            expect_all(cache.keys, keys, f"cache.keys after {i + 1} appends", i)
            expect_all(cache.values, values, f"cache.values after {i + 1} appends", i)
            expect(len(cache) == t, f"len(cache) is {len(cache)} after {t} positions")
        expected_bytes = B * H * t * (Dh + Dv) * itemsize
        expect(
            cache.nbytes == expected_bytes,
            f"cache.nbytes is {cache.nbytes}, expected B·H·t·(Dh + Dv)·{itemsize} = "
            f"{expected_bytes}",
        )

    def independent():
        first, second = cls(), cls()
        call_on_copies(first.append, {"key": keys[0], "value": values[0]})
        call_on_copies(second.append, {"key": keys[1], "value": values[1]})
        expect_all(first.keys, keys, "the first cache's keys after another cache's append", 0)
        expect(
            len(first) == chunks[0] and len(second) == chunks[1],
            "two caches share their keys: keep them on the instance (self.keys), not on the "
            "class or in a default argument",
        )

    run(
        "KVCache",
        {
            f"append concatenates along dim 2, (B, H, t, Dh) = {(B, H, sum(chunks), Dh)}, "
            "len and nbytes, inputs unchanged": appends,
            "two caches are independent": independent,
        },
    )


# ----------------------------------------------------------------- cached self-attention


class StandInCache:
    """A key-value cache behind the interface the decoder uses: ``append`` and ``len`` only."""

    def __init__(self):
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def append(self, key, value):  # noqa: D102 - see KVCache
        if self._kv is not None:
            key = torch.cat([self._kv[0], key], dim=2)
            value = torch.cat([self._kv[1], value], dim=2)
        self._kv = (key, value)
        return self._kv

    def __len__(self) -> int:
        return 0 if self._kv is None else self._kv[0].shape[2]


def _attention_shapes(D: int) -> dict[str, tuple[int, ...]]:
    pairs = [(n, p) for n in "qkvo" for p in ("weight", "bias")]
    return {f"W_{n}.{p}": (D, D) if p == "weight" else (D,) for n, p in pairs}


def check_cached_self_attention(fn, B=2, T=4, D=8, H=2, prefix=2, dtype=torch.float32, seed=0):
    """``fn(attn, x (B, 1, D), cache)`` attends from the new position over the cache and itself."""
    from course_lib.multihead import MultiHeadAttention  # chapter 4's module, parameters ours

    gen = generator(seed)
    Dh = D // H
    state = parameter_values(gen, _attention_shapes(D), dtype)
    w = {name: t.double() for name, t in state.items()}
    x = randn(gen, B, T, D, dtype=dtype)  # the T positions, fed one at a time

    def proj(name, inp):
        return inp @ w[f"W_{name}.weight"].T + w[f"W_{name}.bias"]

    def heads(t):
        return t.reshape(B, -1, H, Dh).transpose(1, 2)  # (B, n, D) -> (B, H, n, Dh)

    xd = x.double()
    q, k, v = (heads(proj(n, xd)) for n in "qkv")  # (B, H, T, Dh) each
    tol = 1e-9 if dtype == F64 else 2e-5

    def attend(t, keys, vals, scale=None):
        scale = 1 / math.sqrt(Dh) if scale is None else scale
        weights = ((q[:, :, t : t + 1] @ keys.transpose(-2, -1)) * scale).softmax(-1)
        out = proj("o", (weights @ vals).transpose(1, 2).reshape(B, 1, D))  # (B, 1, D)
        return out, weights  # (B, 1, D), (B, H, 1, n)

    def build():
        module = MultiHeadAttention(D, H).to(dtype).eval()
        load_parameters(module, state, "the MultiHeadAttention")
        return module

    def step(module, t, cache):
        result = call_on_copies(lambda inp: fn(module, inp, cache), {"x": x[:, t : t + 1]})
        expect(isinstance(result, tuple) and len(result) == 2, "return (out, weights)")
        return result

    def compare(t, result, first):
        out, weights = result
        expect_shape(out, (B, 1, D), f"out at position {t}")
        expect_shape(weights, (B, H, 1, t + 1), f"the weights at position {t} (t + 1 = "
                     f"{t + 1} cached positions)")  # fmt: skip
        expected, expected_w = attend(t, k[:, :, : t + 1], v[:, :, : t + 1])
        likely = {
            "attention without the 1/√Dh scaling": attend(
                t, k[:, :, : t + 1], v[:, :, : t + 1], 1.0
            )[0],
            "scaling by 1/√D instead of 1/√Dh": attend(
                t, k[:, :, : t + 1], v[:, :, : t + 1], 1 / math.sqrt(D)
            )[0],
        }
        if t > first:
            likely["the new position attends to the earlier ones only: append its key and "
                   "value before attending"] = attend(t, k[:, :, :t], v[:, :, :t])[0]  # fmt: skip
        twice_k = torch.cat([k[:, :, : t + 1], k[:, :, t : t + 1]], dim=2)
        twice_v = torch.cat([v[:, :, : t + 1], v[:, :, t : t + 1]], dim=2)
        likely["the new key and value appended twice (the token sees itself twice)"] = attend(
            t, twice_k, twice_v
        )[0]
        expect_close(out, expected, f"out at position {t}", likely, atol=tol)
        expect_close(weights, expected_w, f"the weights at position {t}", atol=tol)

    def from_empty():
        module, cache = build(), StandInCache()
        for t in range(T):
            compare(t, step(module, t, cache), 0)
            expect(len(cache) == t + 1, f"after position {t} the cache holds {len(cache)} "
                   f"positions, expected {t + 1}: append the new key and value once")  # fmt: skip

    def continues():
        module, cache = build(), StandInCache()
        cache.append(k[:, :, :prefix].to(dtype), v[:, :, :prefix].to(dtype))
        for t in range(prefix, T):
            compare(t, step(module, t, cache), prefix)

    run(
        "cached_self_attention",
        {
            f"positions 0…{T - 1} one at a time from an empty cache, (B, D, H) = {(B, D, H)}, "
            "x unchanged": from_empty,
            f"continues a cache that holds positions 0…{prefix - 1}": continues,
        },
    )


# -------------------------------------------------------------- the cached Transformer


def check_cached_transformer(
    cls, B=3, S=6, T=5, V_src=11, V_tgt=13, D=8, H=2, N=2, F_=12, dtype=torch.float32, seed=0
) -> None:
    """``cls(model)`` decodes one position per step, as chapter 6's full decoding does."""
    from course_lib.transformer import Transformer  # chapter 6's model, parameters ours

    gen = generator(seed)
    max_len = T + 3
    lens = [S] + [max(2, S - 1 - b) for b in range(1, B)]
    src_lens = torch.tensor(lens)
    src = torch.randint(4, V_src, (B, S), generator=gen)
    src[~real_positions(lens, S)] = 0  # PAD_ID
    other_src = torch.randint(4, V_src, (B, S), generator=gen)
    other_src[~real_positions(lens, S)] = 0
    tgt = torch.randint(4, V_tgt, (B, T), generator=gen)
    tgt[:, 0] = 1  # BOS first, then forced tokens
    tol = 1e-9 if dtype == F64 else 2e-4

    def make(norm_first):
        args = (V_src, V_tgt, D, H, N, F_, 0.0, norm_first, max_len)
        own = Transformer(*args)
        shapes = {n: tuple(t.shape) for n, t in own.state_dict().items() if n != "positions.pe"}
        state = parameter_values(gen, shapes, dtype)
        state["src_embed.embedding.weight"][0] = 0.0  # the PAD rows
        state["tgt_embed.embedding.weight"][0] = 0.0
        state["positions.pe"] = own.positions.pe.to(dtype)
        model = Transformer(*args).to(dtype)
        load_parameters(model, state, "the Transformer")
        oracle = Transformer(*args).double()
        oracle.load_state_dict({n: t.double() for n, t in state.items()})
        return model.eval(), oracle.eval(), state

    def expected(oracle, s):
        with torch.no_grad():
            logits = oracle(s, src_lens, tgt)  # (B, T, V): full decoding of every prefix
        weights = oracle.decoder_layers[-1].cross_attn.last_weights.mean(1)  # (B, T, S)
        return logits, weights

    def self_attention_of(model):
        """A stand-in for cached_self_attention, for the self-attention modules of ``model``."""
        own = [layer.self_attn.W_q.weight.detach().clone() for layer in model.decoder_layers]

        def stand_in(attn, x, cache):
            if not any(torch.equal(attn.W_q.weight.detach(), w) for w in own):
                raise CheckFailed(
                    "cached_self_attention was called with a module that is not a decoder "
                    "layer's self_attn"
                )
            H_ = attn.num_heads
            B_, one, D_ = x.shape

            def split(t):  # (B, 1, D) -> (B, H, 1, Dh)
                return t.reshape(B_, one, H_, D_ // H_).transpose(1, 2)

            keys, values = cache.append(split(attn.W_k(x)), split(attn.W_v(x)))
            heads = F.scaled_dot_product_attention(split(attn.W_q(x)), keys, values)
            out = attn.W_o(heads.transpose(1, 2).reshape(B_, one, D_))
            return out, None  # the decoder needs the output only

        return stand_in

    def alone(model):
        return graded_alone(
            cls.step, KVCache=StandInCache, cached_self_attention=self_attention_of(model)
        )

    def decode_forced(adapter, s, what, logits_expected, weights_expected, other_memory=False):
        encoded = call_on_copies(adapter.encode, {"src": s, "src_lens": src_lens})
        expect(isinstance(encoded, tuple) and len(encoded) == 3, "encode returns 3 values")
        memory, state, mask = encoded
        if other_memory:  # step must use the keys and values encode computed
            memory = torch.zeros_like(as_tensor(memory, "memory")) + 7.0
        for t in range(T):
            result = call_on_copies(
                lambda p, m, mk, st=state: adapter.step(p, st, m, mk),
                {"prev": tgt[:, t], "memory": memory, "mask": mask},
            )
            expect(isinstance(result, tuple) and len(result) == 3, "step returns 3 values")
            logits, state, weights = result
            expect_shape(logits, (B, V_tgt), f"the logits of step {t}")
            hint = ""
            if t > 0:
                hint = (
                    " (step 0 was right: does the token at step t get the positional-encoding "
                    "row of its position t = len(cache), and does each layer's cache keep "
                    "the earlier positions?)"
                )
            try:
                expect_close(logits, logits_expected[:, t], f"{what}: the logits of step {t}",
                             atol=tol)  # fmt: skip
            except CheckFailed as error:
                raise CheckFailed(str(error) + hint) from None
            expect_shape(weights, (B, S), f"the cross-attention weights of step {t}")
            expect_close(
                weights,
                weights_expected[:, t],
                f"{what}: the last layer's cross-attention weights of step {t}, averaged "
                "over heads",
                atol=tol,
            )

    def forced(norm_first):
        model, oracle, _ = make(norm_first)
        name = "pre-LN" if norm_first else "post-LN"
        with alone(model):
            adapter = cls(model)
            decode_forced(adapter, src, name, *expected(oracle, src))

    def fresh_per_sentence():
        model, oracle, _ = make(False)
        with alone(model):
            adapter = cls(model)
            decode_forced(adapter, src, "the first batch", *expected(oracle, src))
            again = "a second batch decoded with the same adapter (a fresh cache per sentence?)"
            decode_forced(adapter, other_src, again, *expected(oracle, other_src))

    def interleaved():
        model, oracle, _ = make(True)
        logits, weights = expected(oracle, src)
        with alone(model):
            adapter = cls(model)
            encoded = call_on_copies(adapter.encode, {"src": src, "src_lens": src_lens})
            call_on_copies(adapter.encode, {"src": other_src, "src_lens": src_lens})
            memory, state, mask = encoded
            got = adapter.step(tgt[:, 0].clone(), state, memory, mask)[0]
        expect_close(
            got,
            logits[:, 0],
            "the logits of the first batch after encoding a second one: keep the caches in "
            "the state encode returns, not on the adapter",
            atol=tol,
        )

    def memory_projected_once():
        model, oracle, _ = make(False)
        with alone(model):
            decode_forced(
                cls(model),
                src,
                "step given a different memory (it must use the cross-attention keys and "
                "values encode computed once per sentence, not project memory again)",
                *expected(oracle, src),
                other_memory=True,
            )

    def greedy():
        from course_lib.seq2seq import greedy_decode

        model, _, _ = make(True)
        with torch.no_grad():
            full, _ = greedy_decode(model, src, src_lens, T, eos_id=-1)
        eos = int(full[0, 1])  # row 0 stops at step 2 at the latest; others later or never
        with torch.no_grad():
            full, full_w = greedy_decode(model, src, src_lens, T, eos_id=eos)
        with alone(model):
            got, got_w = greedy_decode(cls(model), src.clone(), src_lens.clone(), T, eos_id=eos)
        expect(
            tuple(got.shape) == tuple(full.shape) and bool(torch.equal(got, full)),
            f"greedy decoding through the adapter gave {got.tolist()}, full decoding "
            f"{full.tolist()}",
        )
        expect_close(got_w, full_w, "the weights of greedy decoding", atol=tol)

    def eval_only():
        model, _, _ = make(False)
        model.train()
        with alone(model):
            adapter = cls(model)
            try:
                adapter.encode(src.clone(), src_lens.clone())
            except RuntimeError:
                return
        raise CheckFailed("encode on a model in training mode must raise RuntimeError")

    run(
        "CachedTransformer",
        {
            f"post-LN: forced decoding equals full decoding (N = {N}, D = {D}, H = {H}), "
            "inputs unchanged": lambda: forced(False),
            "pre-LN: forced decoding equals full decoding": lambda: forced(True),
            "a second batch decoded with the same adapter": fresh_per_sentence,
            "two sentences encoded before decoding do not share caches": interleaved,
            "step uses the cross-attention keys and values computed by encode": (
                memory_projected_once
            ),
            "greedy_decode through the adapter gives full decoding's tokens": greedy,
            "a model in training mode raises RuntimeError": eval_only,
        },
    )
