"""course_lib.training with the chapter 3 model: a tiny run overfits, runs are reproducible,
checkpoints round-trip, and resuming from one continues exactly where training stopped."""

import pytest
import torch

from course_lib import data, training
from course_lib.seq2seq import Seq2Seq, exact_match, greedy_decode, sequence_loss

MAX_LEN = 12


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """24 dates: few enough for a small model to learn by heart in a few seconds."""
    task = data.dates_task(30, seed=7)
    return task, task.encode("train")[:24]


def make_model(task, seed=0):
    torch.manual_seed(seed)
    return Seq2Seq(
        len(task.src_vocab), len(task.tgt_vocab), embed_size=16, hidden_size=32, attention_size=32
    )


def loss_fn(model, batch):
    return sequence_loss(model, batch.src, batch.src_lens, batch.tgt)


def run(model, examples, epochs, **kwargs):
    return training.fit(
        model,
        loss_fn,
        lambda epoch: data.make_batches(examples, batch_size=8, shuffle=True, seed=epoch),
        epochs=epochs,
        lr=1e-2,
        progress=False,
        device="cpu",
        **kwargs,
    )


def test_a_tiny_run_overfits(tiny):
    task, examples = tiny
    model = make_model(task)
    history = run(
        model,
        examples,
        epochs=80,
        evaluate=lambda m: {"exact": exact_match(m, examples, MAX_LEN).float().mean().item()},
        stop_when=lambda metrics: metrics["exact"] == 1.0,
    )
    assert history[0].train_loss > 1.5  # about ln(15) at the start
    assert history[-1]["exact"] == 1.0, [r["exact"] for r in history]
    assert history[-1].train_loss < 0.2
    assert len(history) < 80  # stopped early, at the target
    assert all(r.tokens_per_second > 0 for r in history)
    src, tgt = examples[0]
    tokens, weights = greedy_decode(model, torch.tensor([src]), torch.tensor([len(src)]), MAX_LEN)
    assert task.decode_target(tokens[0]) == task.decode_target(tgt)
    assert weights.shape == (1, tokens.shape[1], len(src))


def test_training_is_reproducible(tiny):
    task, examples = tiny
    a, b = make_model(task), make_model(task)
    losses_a = [r.train_loss for r in run(a, examples, epochs=2)]
    losses_b = [r.train_loss for r in run(b, examples, epochs=2)]
    assert losses_a == losses_b
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_checkpoint_round_trip(tiny, tmp_path):
    task, examples = tiny
    model = make_model(task)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    run(model, examples, epochs=1, optimizer=optimizer)
    path = training.save_checkpoint(tmp_path / "sub" / "model.pt", model, optimizer, note="hi")
    restored = make_model(task, seed=1)
    restored_optimizer = torch.optim.Adam(restored.parameters(), lr=1e-2)
    assert not torch.equal(restored.bridge.weight, model.bridge.weight)
    extra = training.load_checkpoint(path, restored, restored_optimizer)
    assert extra == {"note": "hi"}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name
    assert restored_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    batch = data.collate(examples[:4])
    with torch.no_grad():
        assert torch.equal(
            model(batch.src, batch.src_lens, batch.tgt[:, :-1]),
            restored(batch.src, batch.src_lens, batch.tgt[:, :-1]),
        )
    assert not (tmp_path / "sub" / "model.pt.tmp").exists()


def test_resume_continues_where_training_stopped(tiny, tmp_path):
    task, examples = tiny
    straight = make_model(task)
    history = run(straight, examples, epochs=2)
    path = tmp_path / "ckpt.pt"
    first = make_model(task)
    run(first, examples, epochs=1, checkpoint=path)
    resumed = make_model(task, seed=3)  # different weights: all of them must come from the file
    resumed_history = run(resumed, examples, epochs=2, checkpoint=path, resume=True)
    assert [r.epoch for r in resumed_history] == [0, 1]
    assert resumed_history[-1].train_loss == pytest.approx(history[-1].train_loss)
    for pa, pb in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_evaluate_every_records_mid_epoch(tiny):
    task, examples = tiny
    history = run(
        make_model(task), examples, epochs=2, evaluate=lambda m: {"x": 1.0}, evaluate_every=2
    )
    assert [r.step for r in history] == [2, 3, 4, 6]  # every 2 steps, and at each epoch end
    assert all(r["x"] == 1.0 for r in history)


def test_lr_schedule_sets_each_steps_rate_and_survives_resume(tiny, tmp_path):
    task, examples = tiny  # 3 batches per epoch
    schedule = training.warmup_linear(2, 6)
    assert [schedule(s) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    seen = []

    class Recording(torch.optim.Adam):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    model = make_model(task)
    run(model, examples, epochs=2, optimizer=Recording(model.parameters(), lr=0.1),
        lr_schedule=schedule)  # fmt: skip
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025])
    straight, path = make_model(task), tmp_path / "ckpt.pt"
    run(straight, examples, epochs=2, lr_schedule=schedule)
    run(make_model(task), examples, epochs=1, checkpoint=path, lr_schedule=schedule)
    resumed = make_model(task, seed=3)
    run(resumed, examples, epochs=2, checkpoint=path, resume=True, lr_schedule=schedule)
    for pa, pb in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        training.warmup_linear(5, 5)


def test_device_helpers():
    assert training.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    batch = data.collate([([5], [1, 4, 2])])
    assert training.to_device((batch, {"x": torch.ones(1)}), "cpu")[1]["x"].device.type == "cpu"
    assert training.count_tokens(batch) == 2
    assert training.count_tokens(torch.ones(3)) == 0


def test_sequence_loss_is_the_shifted_cross_entropy_without_padding(tiny):
    task, examples = tiny
    model = make_model(task)
    batch = data.collate(examples[:5])
    with torch.no_grad():
        logits = model(batch.src, batch.src_lens, batch.tgt[:, :-1])  # (B, L, V)
        loss = sequence_loss(model, batch.src, batch.src_lens, batch.tgt)
    labels = batch.tgt[:, 1:]
    log_probs = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    real = labels != data.PAD_ID
    assert int(real.sum()) == batch.num_target_tokens
    assert torch.allclose(loss, -(log_probs * real).sum() / real.sum(), atol=1e-6)


def test_exact_match_needs_the_whole_target_and_its_eos():
    class Fixed(torch.nn.Module):
        """Emits ``ids`` whatever the input: a model whose predictions we choose."""

        def __init__(self, ids):
            super().__init__()
            self.ids, self.weight = ids, torch.nn.Parameter(torch.zeros(1))

        def encode(self, src, src_lens):
            return src[:, :, None].float(), torch.zeros(src.shape[0], 1), src != 0

        def step(self, prev, state, memory, mask):
            logits = torch.zeros(prev.shape[0], 8)
            logits[:, self.ids[int(state[0])]] = 1.0
            return logits, state + 1, mask.float()

    examples = [([5, 6], [1, 4, 5, 2])]  # target: 4 5 EOS
    assert exact_match(Fixed([4, 5, 2]), examples, max_len=5).tolist() == [True]
    assert exact_match(Fixed([4, 5, 6, 2]), examples, max_len=5).tolist() == [False]
    assert exact_match(Fixed([4, 5, 5, 5, 5]), examples, max_len=3).tolist() == [False]
    assert exact_match(Fixed([4, 2]), examples, max_len=5).tolist() == [False]


def test_seq2seq_functions_name_what_is_wrong(tiny):
    from course_lib.seq2seq import AdditiveAttention

    attention = AdditiveAttention(3, 4, 5)
    query, keys = torch.randn(2, 3), torch.randn(2, 6, 4)
    with pytest.raises(ValueError, match="keys has Dk=5 but W_key has Dk=4"):
        attention(query, torch.randn(2, 6, 5), keys)
    with pytest.raises(ValueError, match="mask must be a boolean tensor"):
        attention(query, keys, keys, torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"query must have shape \(B, Dq\)"):
        attention(query[0], keys, keys)
    task, examples = tiny
    model = make_model(task)
    batch = data.collate(examples[:2])
    with pytest.raises(ValueError, match="src must hold integer token ids"):
        greedy_decode(model, batch.src.float(), batch.src_lens, MAX_LEN)
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        greedy_decode(model, batch.src, batch.src_lens, 0)
    with pytest.raises(ValueError, match="tgt needs at least BOS and EOS"):
        sequence_loss(model, batch.src, batch.src_lens, batch.tgt[:, :1])
    with pytest.raises(ValueError, match="src_lens must lie in 1..S"):
        model.encode(batch.src, batch.src_lens + 50)
