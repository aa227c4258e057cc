"""``python -m course_lib.train``: it trains, resumes exactly, and under torchrun (gloo, two
processes) computes what one process does with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from course_lib import ladder, train
from course_lib.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

# a few steps of the tiny model on 300 sentences, batches of 16: seconds, not minutes
SMALL = ["--examples", "300", "--batch-size", "16", "--no-progress", "--log-every", "1"]


def parameters(out):
    return torch.load(out / "checkpoint.pt", weights_only=False)["model"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_it_trains_and_writes_metrics_and_a_loadable_checkpoint(tmp_path):
    train.main([*SMALL, "--steps", "8", "--eval-every", "4", "--lr", "3e-3", "--out",
                str(tmp_path)])  # fmt: skip
    log = metrics(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 9))
    assert log[-1]["loss"] < log[0]["loss"]
    assert "exact_match" in log[3] and 0 <= log[7]["exact_match"] <= 1
    assert 0 <= log[7]["bleu"] <= 100
    assert all(r["tokens_per_second"] > 0 for r in log)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 8 and saved["args"]["size"] == "tiny"
    task = train.TASKS["en-ko"](300, 0)
    model = Transformer(len(task.src_vocab), len(task.tgt_vocab), **train.SIZES["tiny"])
    model.load_state_dict(saved["model"])  # strict: the model entry is the state_dict


@pytest.mark.parametrize(
    "data",
    [[], ["--task", "en-ko-large", "--batch-tokens", "400", "--examples", "120"]],
    ids=["fixed-split", "fresh-sentences-token-batches"],
)
def test_resume_gives_the_parameters_of_an_uninterrupted_run(tmp_path, data):
    # dropout on: its masks must resume too; 6 steps cross an epoch boundary in both cases
    args = [*SMALL, *data, "--steps", "6", "--warmup", "2"]
    train.main([*args, "--out", str(tmp_path / "straight")])
    train.main([*args, "--stop-at", "3", "--out", str(tmp_path / "resumed")])
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 3
    train.main([*args, "--resume", "--out", str(tmp_path / "resumed")])
    straight, resumed = parameters(tmp_path / "straight"), parameters(tmp_path / "resumed")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    assert [r["step"] for r in metrics(tmp_path / "resumed")] == list(range(1, 7))


def test_epochs_reshuffle_the_batches():
    """The chapter's exercises (schedule, step, shard) are graded by course_lib.checks; the
    command's own piece is the batches of an epoch, the same on every rank."""
    examples = train.TASKS["en-ko"](300, 0).encode("train")
    first, again = (train.epoch_batches(examples, 16, seed=0, epoch=0) for _ in range(2))
    second = train.epoch_batches(examples, 16, seed=0, epoch=1)
    assert all(torch.equal(a.src, b.src) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0].src, second[0].src)  # a new order each epoch


def test_token_batches_fit_the_budget_and_waste_less_padding():
    task = train.TASKS["en-ko-large"](0, 0)
    examples = task.train_examples(0, 600)

    def padding(batches):
        real = sum(int(b.src_lens.sum() + b.tgt_lens.sum()) for b in batches)
        return 1 - real / sum(b.src.numel() + b.tgt.numel() for b in batches)

    by_tokens = train.epoch_batches(examples, 0, seed=0, epoch=0, batch_tokens=500)
    assert sum(len(b) for b in by_tokens) == len(examples)
    assert all(b.src.numel() + b.tgt.numel() <= 500 for b in by_tokens)
    by_count = train.epoch_batches(examples, 16, seed=0, epoch=0)
    assert padding(by_tokens) < padding(by_count) / 2
    again = train.epoch_batches(examples, 0, seed=0, epoch=1, batch_tokens=500)
    assert [len(b) for b in again] != [len(b) for b in by_tokens] or not all(
        torch.equal(a.src, b.src) for a, b in zip(again, by_tokens, strict=True)
    )  # another epoch, other neighbours of equal length


def torchrun(tmp_path, name, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "course_lib.train",
               *SMALL, "--dropout", "0", "--out", str(tmp_path / name), *args]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name


@pytest.mark.slow
def test_two_processes_with_gloo_match_one_with_the_same_global_batch(tmp_path):
    """DDP over 2 ranks × 2 accumulated micro-batches = 1 process × 4, micro-batch for
    micro-batch; and with accumulation the gradients are all-reduced once per step (no_sync),
    as often as without it."""
    steps = ["--steps", "3", "--lr", "3e-3"]
    ddp = torchrun(tmp_path, "ddp", *steps, "--accumulate", "2")
    train.main([*SMALL, *steps, "--dropout", "0", "--accumulate", "4", "--out",
                str(tmp_path / "one")])  # fmt: skip
    one = parameters(tmp_path / "one")
    for name, value in parameters(ddp).items():
        if name.endswith("W_k.bias"):
            # Its exact gradient is zero (it adds q·b to every score of a query, which the
            # softmax ignores), so Adam normalises rounding noise into steps of up to lr.
            assert (value - one[name]).abs().max() <= 3e-3 * 3, name
            continue
        torch.testing.assert_close(value, one[name], atol=1e-6, rtol=1e-5, msg=name)
    for mine, theirs in zip(metrics(ddp), metrics(tmp_path / "one"), strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    no_accumulation = torchrun(tmp_path, "ddp1", *steps)
    calls = metrics(ddp)[-1]["allreduce_calls"]
    assert calls > 0 and calls == metrics(no_accumulation)[-1]["allreduce_calls"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_learns_what_fp32_learns(tmp_path, precision):
    """Autocast on the CPU (fp16 with gradient scaling): the losses of the first steps stay
    within a few percent of float32's."""
    args = [*SMALL, "--steps", "4", "--dropout", "0", "--lr", "3e-3"]
    train.main([*args, "--out", str(tmp_path / "fp32")])
    train.main([*args, "--precision", precision, "--out", str(tmp_path / precision)])
    for low, full in zip(metrics(tmp_path / precision), metrics(tmp_path / "fp32"), strict=True):
        assert low["loss"] == pytest.approx(full["loss"], rel=0.03)
    scaler = torch.load(tmp_path / precision / "checkpoint.pt", weights_only=False)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # a scaler's state only where it scales


def test_ladder_benchmark_runs_every_rung_and_checks_the_loss(capsys, tmp_path):
    results = ladder.main(["--quick", "--json", str(tmp_path / "ladder.json")])
    assert [r["rung"] for r in results][:4] == [name for name, _ in ladder.RUNGS[:4]]
    assert all(r["loss_ok"] and r["tokens_per_second"] > 0 for r in results)
    assert results[0]["speedup"] == 1.0
    saved = json.loads((tmp_path / "ladder.json").read_text())
    assert saved["meta"]["size"] == "tiny" and len(saved["rungs"]) == len(results)
    assert "tokens/s" in capsys.readouterr().out
