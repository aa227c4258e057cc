"""course_lib.transformer as a library: chapter 3's functions drive it unchanged, step agrees
with forward, and the benchmark runs."""

import pytest
import torch

from benchmarks import transformer as benchmark
from course_lib.seq2seq import greedy_decode, sequence_loss
from course_lib.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("norm_first", [False, True])
def test_step_by_step_decoding_agrees_with_teacher_forcing(norm_first):
    torch.manual_seed(0)
    model = Transformer(11, 13, 16, 2, 2, 32, dropout=0.1, norm_first=norm_first).eval()
    src = torch.randint(4, 11, (3, 5))
    src_lens = torch.tensor([5, 3, 4])
    tokens, weights = greedy_decode(model, src, src_lens, max_len=6)
    assert weights.shape == (3, tokens.shape[1], 5)
    assert torch.allclose(weights.sum(-1), torch.ones(3, tokens.shape[1]), atol=1e-5)
    assert (weights[1, :, 3:] == 0).all()  # padded source positions get no weight
    tgt_in = torch.cat([torch.ones(3, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    logits = model(src, src_lens, tgt_in)  # teacher forcing on the decoded tokens
    assert torch.equal(logits.argmax(-1)[:, :1], tokens[:, :1])
    memory, state, mask = model.encode(src, src_lens)
    for t in range(tokens.shape[1]):
        step_logits, state, _ = model.step(tgt_in[:, t], state, memory, mask)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-5)


def test_training_takes_the_fused_path_and_decoding_asks_for_eval():
    """In training the layers keep no weights (the fused kernel); in eval they keep them for
    plots and ``step``, and decoding a model left in training mode says what to do."""
    torch.manual_seed(0)
    model = Transformer(11, 13, 16, 2, 1, 32, dropout=0.0)
    src, src_lens, tgt_in = torch.randint(4, 11, (2, 5)), torch.tensor([5, 3]), torch.ones(2, 1)
    train_logits = model(src, src_lens, tgt_in.long())
    assert model.decoder_layers[0].cross_attn.last_weights is None
    with pytest.raises(RuntimeError, match="model.eval"):
        greedy_decode(model, src, src_lens, max_len=3)
    eval_logits = model.eval()(src, src_lens, tgt_in.long())
    torch.testing.assert_close(train_logits, eval_logits)  # dropout 0: the same function
    assert model.decoder_layers[0].cross_attn.last_weights.shape == (2, 2, 1, 5)


def test_sequence_loss_trains_it():
    torch.manual_seed(0)
    model = Transformer(11, 13, 16, 2, 1, 32, dropout=0.0)
    src, src_lens = torch.randint(4, 11, (8, 5)), torch.full((8,), 5)
    tgt = torch.cat([torch.ones(8, 1, dtype=torch.long), src + 2, torch.full((8, 1), 2)], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = sequence_loss(model, src, src_lens, tgt).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = sequence_loss(model, src, src_lens, tgt)
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 5


def test_arguments_are_checked():
    model = Transformer(11, 13, 16, 2, 1, 32)
    with pytest.raises(ValueError, match="src_lens must lie in 1..S=5"):
        model.encode(torch.randint(4, 11, (2, 5)), torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="src must be a tensor of token ids"):
        model.encode(torch.randn(2, 5), torch.tensor([5, 5]))


def test_benchmark_runs_and_agrees(capsys):
    ratios = benchmark.main(["--quick"])
    assert set(ratios) == {"tiny", "dates"} and ratios["tiny"] > 0
    out = capsys.readouterr().out
    assert "ours/torch" in out and "until 99% validation exact match" in out
