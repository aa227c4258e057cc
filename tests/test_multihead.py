"""course_lib.multihead as a library: agreement with PyTorch (outputs, weights, gradients),
argument errors, the toy tasks and the maps the chapter reports, and the benchmark."""

import pytest
import torch
from torch import nn

from benchmarks import multihead as benchmark
from course_lib import data
from course_lib.multihead import (
    MultiHeadAttention,
    OneLayerAttention,
    SelfAttention,
    copy_accuracy,
    merge_heads,
    share_on,
    split_heads,
    train_copier,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def twins(D, H, kdim, vdim, bias=True):
    """Our module and nn.MultiheadAttention with the same float64 weights."""
    ours = MultiHeadAttention(D, H, bias=bias, kdim=kdim, vdim=vdim).double()
    theirs = nn.MultiheadAttention(
        D, H, bias=bias, batch_first=True, kdim=kdim, vdim=vdim, dtype=torch.float64
    )
    with torch.no_grad():
        qkv = [ours.W_q.weight, ours.W_k.weight, ours.W_v.weight]
        if theirs._qkv_same_embed_dim:
            theirs.in_proj_weight.copy_(torch.cat(qkv))
        else:
            for name, w in zip(("q", "k", "v"), qkv, strict=True):
                getattr(theirs, f"{name}_proj_weight").copy_(w)
        theirs.out_proj.weight.copy_(ours.W_o.weight)
        if bias:
            theirs.in_proj_bias.copy_(torch.cat([ours.W_q.bias, ours.W_k.bias, ours.W_v.bias]))
            theirs.out_proj.bias.copy_(ours.W_o.bias)
    return ours, theirs


@pytest.mark.parametrize(
    "B, L, S, H, Dh, kdim, vdim, bias",
    [(2, 3, 5, 2, 4, None, None, True), (3, 4, 6, 3, 2, 5, 7, True), (1, 6, 2, 4, 3, 9, 4, False)],
)
@pytest.mark.parametrize("need_weights", [True, False])
def test_matches_nn_multihead_attention_with_gradients(
    B, L, S, H, Dh, kdim, vdim, bias, need_weights
):
    torch.manual_seed(B * 100 + L)
    D = H * Dh
    ours, theirs = twins(D, H, kdim, vdim, bias)
    query = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
    key = torch.randn(B, S, kdim or D, dtype=torch.float64, requires_grad=True)
    value = torch.randn(B, S, vdim or D, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(B, L, S) < 0.7
    mask[..., 0] = True  # every query keeps a key: nn.MultiheadAttention gives NaN otherwise
    out, w = ours(query, key, value, mask, need_weights=need_weights)
    expected, expected_w = theirs(
        query, key, value, attn_mask=~mask.repeat_interleave(H, 0), average_attn_weights=False
    )
    torch.testing.assert_close(out, expected)
    if need_weights:
        torch.testing.assert_close(w, expected_w)
    else:
        assert w is None
    grad = torch.randn_like(out)
    mine = torch.autograd.grad(out, [query, key, value, ours.W_o.weight], grad)
    ref = torch.autograd.grad(expected, [query, key, value, theirs.out_proj.weight], grad)
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_fully_masked_query_returns_the_output_bias_in_both_paths():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 3, 8)
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1] = False  # query 1 may attend to nothing
    for need_weights in (True, False):
        out, w = mha(x, x, x, mask, need_weights=need_weights)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[:, 1], mha.W_o.bias.expand(2, 8))
        if need_weights:
            assert (w[:, :, 1] == 0).all()


def test_split_and_merge_are_inverse_and_self_attention_keeps_weights():
    x = torch.randn(2, 5, 12)
    assert split_heads(x, 3).shape == (2, 3, 5, 4)
    assert torch.equal(merge_heads(split_heads(x, 3)), x)
    layer = SelfAttention(12, 6)
    out, w = layer(x, torch.ones(5, 5, dtype=torch.bool).tril())
    assert out.shape == (2, 5, 6) and torch.equal(layer.last_weights, w.detach())
    assert (w.triu(1) == 0).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randn(2, 3, 8), torch.randn(2, 4, 6), torch.randn(2, 4, 8)),
         "key has kdim=6 but W_k has kdim=8"),
        (lambda m: m(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 8)),
         "value has S=5 but key has S=4"),
        (lambda m: m(torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)),
         "query must have shape (B, L, D)"),
        (lambda m: m(*[torch.randn(2, 3, 8)] * 3, torch.ones(2, 3, 3)),
         "attn_mask must be a boolean tensor"),
        (lambda m: m(*[torch.randn(2, 3, 8)] * 3, torch.ones(3, 2, 3, 3, dtype=torch.bool)),
         "attn_mask has shape (3, 2, 3, 3)"),
        (lambda m: m(*[torch.randn(2, 3, 8)] * 3, torch.ones(3, dtype=torch.bool)),
         "attn_mask must have shape (L, S), (B, L, S) or (B, H, L, S)"),
    ],
)  # fmt: skip
def test_arguments_are_checked_with_messages_that_name_them(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(MultiHeadAttention(8, 2))


def test_split_heads_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="dividing D=10"):
        split_heads(torch.randn(2, 3, 10), 4)
    with pytest.raises(ValueError, match="must divide d_model=10"):
        MultiHeadAttention(10, 4)


def test_toy_tasks():
    tokens, targets = data.offset_task(50, 8, 5, seed=1, offsets=(-2, 3))
    assert tokens.shape == (50, 8) and targets.shape == (50, 8, 2)
    assert torch.equal(targets[:, 2:, 0], tokens[:, :-2])
    assert torch.equal(targets[:, :5, 1], tokens[:, 3:])
    assert (targets[:, :2, 0] == data.IGNORE_INDEX).all()
    assert (targets[:, 5:, 1] == data.IGNORE_INDEX).all()
    assert torch.equal(data.offset_task(50, 8, 5, seed=1)[0], tokens)  # seeded
    tokens, targets = data.reverse_task(20, 6, 4, seed=0)
    assert torch.equal(targets[..., 0], tokens.flip(1))
    batches = list(data.tensor_batches(tokens, targets, 8, seed=0))
    assert [len(b[0]) for b in batches] == [8, 8, 4]
    assert sorted(torch.cat([b[0] for b in batches]).tolist()) == sorted(tokens.tolist())


def test_reversal_model_learns_the_mirror_map():
    """The chapter's claim, checked: the learned map is the anti-diagonal, not just plotted."""
    L, V = 10, 10
    train, test = data.reverse_task(10_000, L, V, seed=1000), data.reverse_task(2_000, L, V, 2000)
    torch.manual_seed(0)
    model = OneLayerAttention(V, L, d_model=16, num_heads=1)
    train_copier(model, train, test, steps=1000, target=0.995)
    with torch.no_grad():
        _, weights = model(test[0])
    assert share_on(weights, torch.arange(L).flip(0)).item() >= 0.9
    assert copy_accuracy(model, *test)["output 0"] >= 0.95


@pytest.mark.slow
def test_two_heads_solve_what_one_head_of_the_same_width_cannot():
    L, V = 12, 16
    train, test = data.offset_task(10_000, L, V, 1000), data.offset_task(2_000, L, V, 2000)
    accuracy = {}
    for heads in (1, 2):
        torch.manual_seed(0)
        model = OneLayerAttention(V, L, d_model=8, num_heads=heads, num_outputs=2)
        train_copier(model, train, test, steps=600)
        result = copy_accuracy(model, *test)
        accuracy[heads] = min(result["output 0"], result["output 1"])
    assert accuracy[2] >= 0.95
    assert accuracy[1] <= 0.7


def test_benchmark_runs_and_reports_ratios(capsys):
    results = benchmark.main(["--quick"])
    assert set(results) == {16, 32}
    for row in results.values():
        assert row["fused/torch"] > 0 and row["explicit/fused"] > 0
    assert "explicit/fused" in capsys.readouterr().out
