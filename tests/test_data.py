"""course_lib.data: vocabularies, the two synthetic tasks, splits and padded batches."""

import datetime as dt
import random

import pytest
import torch

from course_lib import data


# ------------------------------------------------------------------------------ vocabulary
def test_vocab_reserves_the_special_ids():
    vocab = data.Vocab(["b", "a", "b", data.PAD])
    assert vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (data.PAD_ID, data.BOS_ID, data.EOS_ID, data.UNK_ID) == (0, 1, 2, 3)
    assert vocab.itos[4:] == ["b", "a"]  # given order, duplicates and specials dropped
    assert len(vocab) == 6


def test_encode_decode_round_trip_and_unknown_tokens():
    vocab = data.Vocab("abc")
    ids = vocab.encode(list("cab"), bos=True, eos=True)
    assert ids == [1, 6, 4, 5, 2]
    assert vocab.decode(ids) == list("cab")
    assert vocab.encode(["a", "z"]) == [4, data.UNK_ID]
    assert vocab.decode(torch.tensor([4, 5, 2, 6, 6])) == ["a", "b"]  # stops at EOS
    assert vocab.decode([1, 4, 0, 0]) == ["a"]  # BOS and PAD dropped
    assert data.Vocab(vocab.to_list()) == vocab


# ------------------------------------------------------------------------------ dates
def test_every_date_format_matches_its_name():
    """Each format's name is what it writes for Tuesday, 3 March 2020."""
    day = dt.date(2020, 3, 3)
    assert day.weekday() == 1  # a Tuesday
    for name, fmt in data.DATE_FORMATS.items():
        assert fmt(day) == name
    assert {"Tuesday, March 3, 2020", "3 Mar 20", "2020년 3월 3일 화요일"} <= set(data.DATE_FORMATS)


def test_ordinals():
    got = [data._ordinal(d) for d in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)]
    assert got == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "23rd",
        "31st",
    ]


def test_dates_task_is_deterministic_and_split_80_10_10():
    a, b = data.dates_task(500, seed=3), data.dates_task(500, seed=3)
    assert (a.train, a.valid, a.test) == (b.train, b.valid, b.test)
    assert a.sizes() == {"train": 400, "valid": 50, "test": 50}
    assert data.dates_task(500, seed=4).train != a.train
    sources = [s for split in (a.train, a.valid, a.test) for s, _ in split]
    assert len(set(sources)) == 500  # distinct sources: no test input was seen in training


def test_dates_targets_are_the_iso_form_of_the_source():
    task = data.dates_task(2000, seed=0)
    for source, target in task.train:
        day = dt.date.fromisoformat(target)
        assert data.FIRST_YEAR <= day.year <= data.LAST_YEAR
        assert source in {fmt(day) for fmt in data.DATE_FORMATS.values()}


def test_two_digit_years_follow_the_pivot():
    rng = random.Random(0)
    for _ in range(300):
        source, target = data.date_example(rng, "3 Mar 20")
        yy = int(source.split()[-1])
        assert int(target[:4]) == (1900 + yy if yy >= 50 else 2000 + yy)


def test_date_vocabularies_are_closed():
    task = data.dates_task(3000, seed=1)
    for split in ("train", "valid", "test"):
        for src, tgt in task.encode(split):
            assert data.UNK_ID not in src and data.UNK_ID not in tgt
    source, target = task.train[0]
    src, tgt = task.encode("train")[0]
    assert task.decode_target(tgt) == target
    assert task.src_vocab.decode(src) == data.tokenize_date(source)
    assert tgt[0] == data.BOS_ID and tgt[-1] == data.EOS_ID


def test_tokenize_date_shows_spaces():
    assert data.tokenize_date("3 Mar 20") == ["3", "_", "m", "a", "r", "_", "2", "0"]
    assert data.tokenize_iso("2020-03-03") == list("2020-03-03")


# ------------------------------------------------------------------------------ EN -> KO
def test_batchim_and_particles():
    assert data.has_batchim("학생") and not data.has_batchim("고양이")
    assert data.particle("고양이", "subject") == "고양이가"
    assert data.particle("학생", "subject") == "학생이"
    assert data.particle("생선", "object") == "생선을"
    assert data.particle("사과", "object") == "사과를"
    assert data.particle("학생", "copula") == "학생이다"
    assert data.particle("의사", "copula") == "의사다"
    with pytest.raises(ValueError):
        data.has_batchim("cat")


def test_the_grammar_gives_the_issue_examples():
    rng, wanted, found = random.Random(0), {"i am a student", "the cat eats fish"}, {}
    for _ in range(200_000):
        en, ko = data.translation_example(rng)
        if en in wanted:
            found[en] = ko
            if len(found) == len(wanted):
                break
    assert found == {
        "i am a student": "나는 학생이다",
        "the cat eats fish": "고양이가 생선을 먹는다",
    }


def test_korean_is_subject_object_verb():
    """Each clause's English verb becomes the last Korean word of its clause; a first clause
    joined by "and" ends in the connective form ("먹었고": "ate and")."""
    ko_forms = {w: forms for (en, forms, _) in data.VERBS.values() for w in en}
    task = data.translation_task(1000, seed=0)
    one, two = 0, 0
    for en, ko in task.train:
        clauses = [c.split() for c in en.split(" and ")]
        verbs = [next((w for w in c if w in ko_forms), None) for c in clauses]
        if verbs[0] is None:  # a copula sentence: "you are a doctor" -> "너는 의사다"
            assert len(clauses) == 1 and clauses[0][1] in ("am", "is", "are")
            assert ko.endswith("다")
            continue
        words = ko.split()
        assert words[-1] in ko_forms[verbs[-1]][:2], (en, ko)  # present or past, sentence end
        if len(clauses) == 2:
            assert any(w in ko_forms[verbs[0]][2:] for w in words[:-1]), (en, ko)
            two += 1
        else:
            one += 1
    assert one > 300 and two > 200


def test_gold_alignment_links_each_korean_word_to_its_translation():
    """Every Korean word is linked to the English word the lexicon translates it with."""
    stems = {en: {ko} for en, (ko, _) in data.PRONOUNS.items()}
    for lexicon in (data.PEOPLE, data.ANIMALS, data.ADJECTIVES, data.OBJECTS):
        for en, ko in lexicon.items():
            stems.setdefault(en, set()).add(ko)
    for en, ko in data.PEOPLE.items():  # the plural copula: "we are students" -> 학생이다
        stems["children" if en == "child" else en + "s"] = {ko}
    for forms, ko_forms, _ in data.VERBS.values():
        for form in forms:
            stems.setdefault(form, set()).update(ko_forms)
    for place, ko in data.PLACES.items():
        stems[place.split()[-1]] = {ko}
    for en, (ko, _) in data.TIMES.items():
        stems[en] = {ko}
    task = data.translation_task(1000, seed=0)
    assert set(task.alignments) == {en for split in ("train", "valid", "test")
                                    for en, _ in task.split(split)}  # fmt: skip
    for en, ko in task.train:
        en_words, ko_words = en.split(), ko.split()
        links = task.alignments[en]
        assert len(links) == len(ko_words)
        for ko_word, i in zip(ko_words, links, strict=True):
            assert any(ko_word.startswith(stem) for stem in stems[en_words[i]]), (en, ko, links)
    rng = random.Random(0)
    assert data.aligned_translation_example(rng)[:2] == data.translation_example(random.Random(0))


def test_translation_task_is_deterministic_and_closed():
    a, b = data.translation_task(300, seed=5), data.translation_task(300, seed=5)
    assert a.train == b.train and a.src_vocab == b.src_vocab and a.tgt_vocab == b.tgt_vocab
    for split in ("train", "valid", "test"):
        for src, tgt in a.encode(split):
            assert data.UNK_ID not in src and data.UNK_ID not in tgt
    assert a.decode_target(a.encode_target("고양이가 생선을 먹는다")) == "고양이가 생선을 먹는다"


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        data.split(range(10), (0.5, 0.5, 0.5))
    train, valid, test = data.split(range(10), (0.6, 0.2, 0.2), seed=1)
    assert sorted(train + valid + test) == list(range(10))
    assert (len(train), len(valid), len(test)) == (6, 2, 2)


# ------------------------------------------------------------------------------ batches
def test_pad_and_collate():
    batch = data.collate([([5, 6, 7], [1, 4, 2]), ([8], [1, 4, 5, 6, 2])])
    assert batch.src.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.src_lens.tolist() == [3, 1]
    assert batch.tgt.tolist() == [[1, 4, 2, 0, 0], [1, 4, 5, 6, 2]]
    assert batch.tgt_lens.tolist() == [3, 5]
    assert batch.src.dtype == batch.src_lens.dtype == torch.long
    assert batch.num_target_tokens == 2 + 4  # everything after BOS
    assert len(batch) == 2
    moved = batch.to("cpu")
    assert torch.equal(moved.tgt, batch.tgt)
    with pytest.raises(ValueError, match="empty"):
        data.pad([[1], []])
    with pytest.raises(ValueError):
        data.pad([])


def test_make_batches_covers_every_example_once_in_a_seeded_order():
    examples = [([i + 4], [1, i + 4, 2]) for i in range(10)]
    plain = list(data.make_batches(examples, batch_size=4))
    assert [len(b) for b in plain] == [4, 4, 2]
    assert torch.cat([b.src[:, 0] for b in plain]).tolist() == [i + 4 for i in range(10)]
    first = [b.src[:, 0].tolist() for b in data.make_batches(examples, 4, shuffle=True, seed=1)]
    again = [b.src[:, 0].tolist() for b in data.make_batches(examples, 4, shuffle=True, seed=1)]
    other = [b.src[:, 0].tolist() for b in data.make_batches(examples, 4, shuffle=True, seed=2)]
    assert first == again and first != other
    assert sorted(sum(first, [])) == [i + 4 for i in range(10)]
    with pytest.raises(ValueError):
        list(data.make_batches(examples, 0))


def test_shift_task_targets_the_previous_token_and_ignores_padding():
    tokens, targets = data.shift_task(200, 3, 9, V=5, seed=4)
    assert tokens.shape == (200, 9) and targets.shape == (200, 9, 1)
    real = tokens != 5  # PAD is the id after the real tokens
    lengths = real.sum(1)
    assert lengths.min() >= 3 and lengths.max() <= 9
    assert torch.equal(real, torch.arange(9)[None, :] < lengths[:, None])  # right-padded
    counted = targets[..., 0] != data.IGNORE_INDEX
    assert torch.equal(counted, real & (torch.arange(9) > 0))
    assert torch.equal(targets[:, 1:, 0][counted[:, 1:]], tokens[:, :-1][counted[:, 1:]])
    assert torch.equal(data.shift_task(200, 3, 9, V=5, seed=4)[0], tokens)
