"""Properties of course_lib.decoding and course_lib.efficient (chapter 8's reference code):
cached decoding gives full decoding's tokens and logits; chunked attention gives full
attention's outputs and gradients; the benchmark's quick run works."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.attention import scaled_dot_product_attention
from course_lib.decoding import CachedTransformer, KVCache, cached_greedy_decode
from course_lib.efficient import chunked_attention
from course_lib.seq2seq import greedy_decode
from course_lib.transformer import Transformer


def _model(norm_first: bool, seed: int, V: int = 17) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(V, V, 16, 2, 2, 24, dropout=0.0, norm_first=norm_first, max_len=64).eval()


def _source(B: int, S: int, V: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, S + 1, (B,), generator=gen)
    lens[0] = S
    src = torch.randint(4, V, (B, S), generator=gen)
    src[torch.arange(S)[None, :] >= lens[:, None]] = 0
    return src, lens


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_equals_full_decoding(one_thread, norm_first, seed):
    model = _model(norm_first, seed)
    src, lens = _source(4, 7, 17, seed)
    with torch.no_grad():
        never, _ = greedy_decode(model, src, lens, 12, eos_id=-1)
        eos = int(never[1, 3])  # row 1 stops by step 4; the others at other steps, or never
        full, full_w = greedy_decode(model, src, lens, 40, eos_id=eos)
        cached, cached_w = cached_greedy_decode(model, src, lens, 40, eos_id=eos)
    assert torch.equal(full, cached)
    torch.testing.assert_close(cached_w, full_w, atol=1e-5, rtol=1e-4)
    assert (full == eos).any(dim=1)[1]


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_logits_match_at_every_step(one_thread, norm_first):
    """Forced tokens: every step's logits equal the full forward pass's, to float64 rounding."""
    model = _model(norm_first, 5).double()
    src, lens = _source(3, 6, 17, 5)
    tgt = torch.randint(4, 17, (3, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(src, lens, tgt)  # (B, T, V)
        adapter = CachedTransformer(model)
        memory, state, mask = adapter.encode(src, lens)
        for t in range(tgt.shape[1]):
            logits, state, _ = adapter.step(tgt[:, t], state, memory, mask)
            torch.testing.assert_close(logits, expected[:, t], atol=1e-10, rtol=1e-10)
    assert all(len(cache) == tgt.shape[1] for cache in state[0])


def test_cache_size_formula():
    model = _model(False, 0)
    src, lens = _source(2, 5, 17, 0)
    adapter = CachedTransformer(model)
    with torch.no_grad():
        memory, state, mask = adapter.encode(src, lens)
        prev = torch.ones(2, dtype=torch.long)
        for _ in range(9):
            _, state, _ = adapter.step(prev, state, memory, mask)
    caches = state[0]
    # 2 (keys and values) · layers · T · D numbers per sequence, 4 bytes each in float32
    assert sum(c.nbytes for c in caches) == 2 * 2 * len(caches) * 9 * 16 * 4
    assert isinstance(caches[0], KVCache)


def test_training_mode_refused():
    model = _model(False, 0).train()
    src, lens = _source(2, 5, 17, 0)
    with pytest.raises(RuntimeError, match="eval"):
        cached_greedy_decode(model, src, lens, 5)


def _masks(B, H, L, S, gen):
    lens = torch.randint(1, S + 1, (B,), generator=gen)
    padding = (torch.arange(S)[None, :] < lens[:, None])[:, None, None, :]  # (B, 1, 1, S)
    causal = torch.ones(L, S, dtype=torch.bool).tril()  # (L, S)
    rows = torch.rand(B, H, L, S, generator=gen) > 0.5
    rows[0, 0, 0] = False  # a fully masked row
    return {"none": None, "padding": padding, "causal": causal, "random": rows & causal}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_chunked_equals_sdpa(one_thread, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    B, H = (int(x) for x in torch.randint(1, 4, (2,), generator=gen))
    L, S = (int(x) for x in torch.randint(1, 20, (2,), generator=gen))
    Dh, Dv = (int(x) for x in torch.randint(1, 9, (2,), generator=gen))
    q = torch.randn(B, H, L, Dh, generator=gen, dtype=dtype)
    k = torch.randn(B, H, S, Dh, generator=gen, dtype=dtype)
    v = torch.randn(B, H, S, Dv, generator=gen, dtype=dtype)
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    for name, mask in _masks(B, H, L, S, gen).items():
        expected, _ = scaled_dot_product_attention(q, k, v, mask)
        if Dh == Dv:  # PyTorch's own SDPA as a second oracle
            torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            torch.testing.assert_close(expected, torch_out, **tol)
        for chunk in sorted({1, 3, max(1, S // 2), S, S + 5}):
            got = chunked_attention(q, k, v, mask, chunk_size=chunk)
            torch.testing.assert_close(got, expected, **tol, msg=f"{name}, chunk {chunk}")


def test_chunked_gradients(one_thread):
    gen = torch.Generator().manual_seed(3)
    B, H, L, S, Dh = 2, 3, 7, 11, 5
    masks = _masks(B, H, L, S, gen)
    for name, mask in masks.items():
        leaves = [torch.randn(B, H, n, Dh, generator=gen, dtype=torch.float64) for n in (L, S, S)]
        grads = []
        for fn in (
            lambda q, k, v, m=mask: scaled_dot_product_attention(q, k, v, m)[0],
            lambda q, k, v, m=mask: chunked_attention(q, k, v, m, chunk_size=4),
        ):
            inputs = [t.clone().requires_grad_() for t in leaves]
            (fn(*inputs) * torch.linspace(-1, 1, Dh, dtype=torch.float64)).sum().backward()
            grads.append([t.grad for t in inputs])
        for want, got in zip(*grads, strict=True):
            assert not torch.isnan(got).any(), name
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8, msg=name)


def test_chunked_matches_is_causal_upper_left():
    """torch's is_causal=True with L != S is the upper-left (tril) mask, as ours."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 4, generator=gen) for n in (3, 5, 5))
    torch_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours = chunked_attention(q, k, v, torch.ones(3, 5, dtype=torch.bool).tril(), chunk_size=2)
    torch.testing.assert_close(ours, torch_out)
    assert math.isclose(float(ours.abs().sum()), float(torch_out.abs().sum()), rel_tol=1e-5)


def test_benchmark_quick(tmp_path, capsys):
    from benchmarks.decoding import main

    out = tmp_path / "bench.json"
    results = main(["--quick", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "Goals" in printed
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert [r["T"] for r in results["decoding"]] == [32]
    assert all(r["identical"] for r in results["decoding"])
    assert {r["method"] for r in results["attention"]} == {"naive", "math", "chunked"}
    assert all(r["extra_peak_bytes"] >= 0 and r["seconds"] > 0 for r in results["attention"])
