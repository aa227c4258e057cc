"""course_lib.grammar: chapter 7's larger EN→KO grammar, its on-the-fly task and corpus BLEU."""

import ast
import math
import os
import random
import statistics
import subprocess
import sys

import pytest
import sacrebleu

from course_lib import data, grammar
from tools.chapters import ROOT

# What a Korean particle must be after a final consonant (받침) and after a vowel.
PARTICLES = {"subject": ("이", "가"), "object": ("을", "를"), "topic": ("은", "는")}
ANIMATE = {**grammar.PEOPLE, **grammar.ANIMALS}
PLURALS = {grammar.plural(noun): noun for noun in ANIMATE}


def korean_nouns() -> dict[str, set[str]]:
    """Every Korean noun of the lexicon (plurals with 들) -> the particle roles it takes."""
    nouns: dict[str, set[str]] = {}
    for ko in grammar.PEOPLE.values():
        nouns[ko] = nouns[ko + "들"] = {"subject", "object", "topic"}
    for ko in grammar.ANIMALS.values():
        nouns[ko] = nouns[ko + "들"] = {"subject", "object"}
    for ko, _ in grammar.THINGS.values():
        nouns[ko] = {"object"}
    return nouns


KOREAN_NOUNS = korean_nouns()


def with_particle(noun: str, role: str) -> str:
    """``noun`` with the particle ``role`` takes after its last syllable (written out here,
    not taken from data.particle, which the grammar itself uses)."""
    after_consonant, after_vowel = PARTICLES[role]
    return noun + (after_consonant if data.has_batchim(noun) else after_vowel)


@pytest.fixture(scope="module")
def task():
    return grammar.GrammarTask(seed=0)


@pytest.fixture(scope="module")
def sample():
    rng = random.Random(12345)
    return [grammar.sentence(rng) for _ in range(3000)]


@pytest.fixture(scope="module")
def chapter3():
    return data.translation_task()


def clauses_en(english: str) -> list[list[str]]:
    """English clauses: the words between "and", "but" and "because"."""
    clauses, current = [], []
    for word in english.split():
        if word in grammar.CONJUNCTIONS:
            clauses.append(current)
            current = []
        else:
            current.append(word)
    return [*clauses, current]


def clauses_ko(korean: str) -> list[list[str]]:
    """Korean clauses: each ends in a connective (-고, -지만, -기 때문에) or the final verb."""
    clauses, current = [], []
    for word in korean.split():
        current.append(word)
        if word.endswith(("고", "지만")) or word == "때문에":
            clauses.append(current)
            current = []
    return [*clauses, current] if current else clauses


# ------------------------------------------------------------------------------ determinism
def test_sentences_are_a_function_of_the_random_state():
    one, again, other = random.Random(7), random.Random(7), random.Random(8)
    first = [grammar.sentence(one) for _ in range(200)]
    assert [grammar.sentence(again) for _ in range(200)] == first
    assert [grammar.sentence(other) for _ in range(200)] != first
    assert len(set(first)) > 190  # and successive draws differ


def test_training_draws_are_a_pure_function_of_seed_epoch_and_n(task):
    again = grammar.GrammarTask(seed=0)
    task.valid_pairs(30)  # drawing held-out sentences first changes nothing
    assert again.train_pairs(2, 300) == task.train_pairs(2, 300)
    assert task.train_pairs(2, 100) == task.train_pairs(2, 300)[:100]
    epoch2 = {en for en, _ in task.train_pairs(2, 300)}
    epoch3 = {en for en, _ in task.train_pairs(3, 300)}
    other_seed = {en for en, _ in grammar.GrammarTask(seed=1).train_pairs(2, 300)}
    assert len(epoch2 & epoch3) < 15 and len(epoch2 & other_seed) < 15  # fresh sentences
    examples = task.train_examples(2, 50)
    assert examples == [
        (task.encode_source(s), task.encode_target(t)) for s, t in task.train_pairs(2, 50)
    ]


def test_held_out_sets_are_fixed_by_the_seed_and_distinct(task):
    fresh = grammar.GrammarTask(seed=0)
    assert fresh.valid_pairs(40) == task.valid_pairs(40)
    assert fresh.test_pairs(40) == task.test_pairs(40)
    assert task.valid_pairs(10) == task.valid_pairs(40)[:10]
    assert len({en for en, _ in task.valid_pairs(200)}) == 200
    assert grammar.GrammarTask(seed=1).valid_pairs(40) != task.valid_pairs(40)
    assert task.valid_examples(5) == [
        (task.encode_source(s), task.encode_target(t)) for s, t in task.valid_pairs(5)
    ]
    assert task.test_examples(5)[0][1] == task.encode_target(task.test_pairs(1)[0][1])


def test_the_same_sentences_in_a_process_with_another_string_hash_seed(task):
    """The split is a stable hash, not Python's hash() of a string, salted per process."""
    code = (
        "from course_lib.grammar import GrammarTask\n"
        "t = GrammarTask(seed=0)\n"
        "print(repr((hash('salt'), t.valid_pairs(15), t.test_pairs(15), t.train_pairs(1, 15))))\n"
    )
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed},
    )
    salted, *pairs = ast.literal_eval(result.stdout)
    assert salted != hash("salt")  # string hashes do differ between the two processes
    assert pairs == [task.valid_pairs(15), task.test_pairs(15), task.train_pairs(1, 15)]


# ------------------------------------------------------------------------------ held out
def test_held_out_sentences_are_never_drawn_for_training(task):
    valid = dict(task.valid_pairs(200))
    test = dict(task.test_pairs(200))
    assert not valid.keys() & test.keys()
    assert not set(valid.values()) & set(test.values())
    assert {grammar.split_of(en) for en in valid} == {"valid"}
    assert {grammar.split_of(en) for en in test} == {"test"}
    train = [pair for epoch in range(4) for pair in task.train_pairs(epoch, 4000)]
    train_en, train_ko = {en for en, _ in train}, {ko for _, ko in train}
    assert not train_en & (valid.keys() | test.keys())
    # each English sentence has one translation and vice versa, so no held-out target
    # is ever a training target either
    assert not train_ko & (set(valid.values()) | set(test.values()))
    assert {grammar.split_of(en) for en in train_en} == {"train"}


def test_about_two_percent_of_all_sentences_is_validation_and_two_percent_test():
    rng = random.Random(99)
    splits = [grammar.split_of(grammar.sentence(rng)[0]) for _ in range(20_000)]
    assert 0.015 < splits.count("valid") / len(splits) < 0.025
    assert 0.015 < splits.count("test") / len(splits) < 0.025
    assert grammar.split_of("The cat  eats fish") == grammar.split_of("the cat eats fish")


def test_each_english_sentence_has_one_korean_translation(sample):
    translations: dict[str, set[str]] = {}
    rng = random.Random(5)
    for en, ko in sample + [grammar.sentence(rng) for _ in range(20_000)]:
        translations.setdefault(en, set()).add(ko)
    assert all(len(kos) == 1 for kos in translations.values())


# ------------------------------------------------------------------------------ vocabularies
def test_every_sentence_encodes_without_unk_and_round_trips(task, sample):
    assert task.name == "en-ko-large" and task.join_target == " "
    for en, ko in sample + task.valid_pairs(100) + task.test_pairs(100):
        src, tgt = task.encode_source(en), task.encode_target(ko)
        assert data.UNK_ID not in src and data.UNK_ID not in tgt, (en, ko)
        assert data.BOS_ID not in src and data.EOS_ID not in src
        assert tgt[0] == data.BOS_ID and tgt[-1] == data.EOS_ID
        assert len(src) == len(en.split()) and len(tgt) == len(ko.split()) + 2
        assert task.decode_target(tgt) == ko
    assert task.encode_source("the dragon eats fish")[1] == data.UNK_ID  # not a word it knows


def test_vocabularies_come_in_a_fixed_sorted_order(task):
    for vocab in (task.src_vocab, task.tgt_vocab):
        assert vocab.itos[:4] == list(data.SPECIALS)
        assert vocab.itos[4:] == sorted(vocab.itos[4:])
    other = grammar.GrammarTask(seed=3)
    assert other.src_vocab == task.src_vocab and other.tgt_vocab == task.tgt_vocab


def test_the_lexicon_is_at_least_four_times_chapter_3s(task, chapter3):
    assert len(task.src_vocab) - 4 >= 4 * (len(chapter3.src_vocab) - 4)
    assert len(task.tgt_vocab) - 4 >= 4 * (len(chapter3.tgt_vocab) - 4)
    assert len(ANIMATE) >= 25 and len(grammar.THINGS) >= 40
    assert len(grammar.VERB_FORMS) >= 25 and len(grammar.INTRANSITIVE) >= 8
    assert len(grammar.ADJECTIVES) >= 12 and len(grammar.PLACES) >= 10
    assert len(grammar.TIMES) >= 8


# ------------------------------------------------------------------------------ Korean
def test_particles_agree_with_batchim_for_every_noun_in_the_lexicon(task, sample):
    vocab = task.tgt_vocab
    for noun, roles in KOREAN_NOUNS.items():
        final = data.has_batchim(noun)
        for role in roles:
            right, wrong = PARTICLES[role] if final else PARTICLES[role][::-1]
            assert noun + right in vocab, noun + right
            assert noun + wrong not in vocab, noun + wrong
    for noun in grammar.PEOPLE.values():  # the copula: 학생이다, 의사다
        right, wrong = noun + "이다", noun + "다"
        if not data.has_batchim(noun):
            right, wrong = wrong, right
        assert right in vocab and wrong not in vocab, noun
    # and in generated sentences, every noun + particle agrees
    particles = {p: role for role, pair in PARTICLES.items() for p in pair}
    checked = 0
    for _, ko in sample:
        for word in ko.split():
            noun, p = word[:-1], word[-1]
            if noun in KOREAN_NOUNS and p in particles:
                final = data.has_batchim(noun)
                assert p == PARTICLES[particles[p]][0 if final else 1], (word, ko)
                checked += 1
    assert checked > 5000


def test_korean_irregular_verbs_are_conjugated_as_korean_does(task):
    vocab = task.tgt_vocab
    for right, wrong in [
        ("들었다", "듣었다"),
        ("도왔다", "돕았다"),
        ("만든다", "만들는다"),
        ("연다", "열는다"),
        ("걸었다", "걷었다"),
        ("들을", "듣을"),
        ("도울", "돕을"),
        ("불렀다", "부르었다"),
    ]:
        assert right in vocab and wrong not in vocab, (right, wrong)


def test_endings_tenses_and_negation():
    eat = grammar.Predicate.of("먹 먹는다 먹었 먹을")
    big = grammar.Predicate.of("크 크다 컸 클", adjective=True)
    doctor, student = grammar.copula("의사"), grammar.copula("학생")
    cases = [
        (eat, "present", "final", False, "먹는다"),
        (eat, "present", "final", True, "먹지 않는다"),
        (eat, "past", "and", False, "먹었고"),
        (eat, "past", "because", True, "먹지 않았기 때문에"),
        (eat, "future", "final", False, "먹을 것이다"),
        (eat, "future", "but", True, "먹지 않을 것이지만"),
        (eat, "present", "because", False, "먹기 때문에"),
        (big, "present", "final", True, "크지 않다"),  # adjectives: 않다, not 않는다
        (big, "past", "but", False, "컸지만"),
        (doctor, "present", "final", False, "의사다"),
        (doctor, "past", "final", False, "의사였다"),
        (student, "past", "and", False, "학생이었고"),
        (doctor, "present", "final", True, "의사가 아니다"),
        (student, "past", "because", True, "학생이 아니었기 때문에"),
    ]
    for pred, tense, ending, negated, korean in cases:
        assert " ".join(grammar.conjugate(pred, tense, ending, negated)) == korean
    with pytest.raises(ValueError, match="future"):
        grammar.conjugate(doctor, "future", "final")


def test_korean_puts_the_verb_last_in_every_clause(sample):
    """Korean is subject–object–verb: in each clause every noun phrase, adjective, place and
    time comes before the predicate, which ends the clause. English puts the verb before its
    object, so the alignments cross."""
    arguments = {noun + p for noun in KOREAN_NOUNS for p in (*"이가을를은는", "에게")}
    arguments |= {p + end for _, p, _ in grammar.PRONOUNS.values() for end in ("를", "에게", "는")}
    arguments |= {*grammar.PRONOUN_SUBJECT.values(), "그들을", "그들은"}
    arguments |= {ko for ko, _, _ in grammar.ADJECTIVES.values()} | set(grammar.PLACES.values())
    arguments |= {w for ko, _ in grammar.TIMES.values() for w in ko.split()}
    shapes = {"object": 0, "recipient": 0, "because": 0, "three clauses": 0}
    for en, ko in sample:
        english, korean = clauses_en(en), clauses_ko(ko)
        assert len(korean) == len(english), (en, ko)
        for clause in korean:
            kinds = ["argument" if w in arguments else "predicate" for w in clause]
            assert kinds[-1] == "predicate" and "argument" in kinds, (clause, ko)
            assert kinds == sorted(kinds), (clause, ko)  # "argument" < "predicate"
            shapes["object"] += any(w.endswith(("을", "를")) for w in clause if w in arguments)
            shapes["recipient"] += any(w.endswith("에게") for w in clause)
        shapes["because"] += "because" in en.split()
        shapes["three clauses"] += len(english) == 3
    assert min(shapes.values()) > 200, shapes


def subject_of(clause: list[str]) -> tuple[str, bool]:
    """The Korean noun of an English clause's subject, and whether it is a pronoun."""
    if clause[0] in grammar.PRONOUNS:
        return grammar.PRONOUNS[clause[0]][1], True
    noun = clause[2] if clause[1] in grammar.ADJECTIVES else clause[1]
    return (ANIMATE[noun], False) if noun in ANIMATE else (ANIMATE[PLURALS[noun]] + "들", False)


def test_a_because_clause_comes_first_in_korean(sample):
    """ "A because B" -> B-기 때문에 A: the clause after "because" moves to the front, and its
    subject takes 이/가 (내가 for "i"), where a main clause's pronoun takes the topic 은/는."""
    seen = 0
    for en, ko in sample:
        if [w for w in en.split() if w in grammar.CONJUNCTIONS] != ["because"]:
            continue
        main, reason = clauses_en(en)
        first, second = clauses_ko(ko)
        assert first[-2:][0].endswith("기") and first[-1] == "때문에", ko
        noun, pronoun = subject_of(reason)
        subject = grammar.PRONOUN_SUBJECT[noun] if pronoun else with_particle(noun, "subject")
        assert subject in first, (en, ko)
        noun, pronoun = subject_of(main)
        if pronoun:
            assert with_particle(noun, "topic") in second, (en, ko)
        else:
            assert {with_particle(noun, "subject"), with_particle(noun, "topic")} & set(second)
        seen += 1
    assert seen > 100


def test_time_words_pick_the_tense_and_open_the_korean_clause(sample):
    future = {"것이다", "것이고", "것이지만", "것이기"}
    checked = 0
    for en, ko in sample:
        if "because" in en.split():
            continue  # the clauses change places: checked above
        for english, korean in zip(clauses_en(en), clauses_ko(ko), strict=True):
            assert bool(future & set(korean)) == ("will" in english), (english, korean)
            text = " " + " ".join(english)
            for time, (ko_time, tenses) in grammar.TIMES.items():
                if text.endswith(" " + time):
                    assert " ".join(korean).startswith(ko_time + " "), (english, korean)
                    if tenses == ("future",):
                        assert "will" in english, english
                    if tenses == ("past",):
                        assert not {"will", "am", "is", "are", "do", "does"} & set(english)
                    if tenses == ("present",):
                        assert not {"will", "was", "were", "did"} & set(english)
                    checked += 1
    assert checked > 300


# ------------------------------------------------------------------------------ English
def test_english_verbs_agree_with_their_subjects(sample):
    forms = [f.split() for f, _ in grammar.VERB_FORMS.values()]
    forms += [f.split() for f, _, _ in grammar.INTRANSITIVE.values()]
    base, third, past = ({f[i] for f in forms} for i in range(3))
    allowed = {
        "3sg": third | past | {"is", "was", "does", "did", "will"},
        "1sg": base | past | {"am", "was", "do", "did", "will"},
        "2": base | past | {"are", "were", "do", "did", "will"},
        "pl": base | past | {"are", "were", "do", "did", "will"},
    }
    counts = dict.fromkeys(allowed, 0)
    for en, _ in sample:
        for clause in clauses_en(en):
            if clause[0] in grammar.PRONOUNS:
                agreement, rest = grammar.PRONOUNS[clause[0]][2], clause[1:]
            else:
                assert clause[0] == "the", clause
                words = clause[2:] if clause[1] in grammar.ADJECTIVES else clause[1:]
                noun, rest = words[0], words[1:]
                assert noun in ANIMATE or noun in PLURALS, clause
                agreement = "3sg" if noun in ANIMATE else "pl"
            verb = rest[0]
            assert verb in allowed[agreement], (agreement, clause)
            if verb in ("do", "does", "did"):
                assert rest[1] == "not" and rest[2] in base, clause
            if verb == "will":
                after = rest[2] if rest[1] == "not" else rest[1]
                assert after in base | {"be"}, clause
            counts[agreement] += 1
    assert min(counts.values()) > 100, counts
    assert [grammar.plural(n) for n in ("cat", "baby", "child", "mouse", "monkey")] == [
        "cats",
        "babies",
        "children",
        "mice",
        "monkeys",
    ]


def test_articles(sample):
    """ "a"/"an" by the next word's first letter; none before an uncountable noun."""
    for en, _ in sample:
        words = en.split()
        for i, article in enumerate(words):
            if article in ("a", "an"):
                assert (words[i + 1][0] in "aeiou") == (article == "an"), en
                noun = words[i + 2] if words[i + 1] in grammar.ADJECTIVES else words[i + 1]
                assert noun in grammar.THINGS or noun in grammar.PEOPLE, en
                assert noun not in grammar.MASS_NOUNS, en
            if article in grammar.MASS_NOUNS:
                assert words[i - 1] not in ("a", "an", "the"), en


# ------------------------------------------------------------------------------ lengths
def test_sentences_are_longer_than_chapter_3s(task, chapter3):
    pairs = chapter3.train + chapter3.valid + chapter3.test
    en3 = statistics.mean(len(en.split()) for en, _ in pairs)
    ko3 = statistics.mean(len(ko.split()) for _, ko in pairs)
    drawn = task.train_pairs(0, 3000)
    en_lengths = [len(en.split()) for en, _ in drawn]
    ko_lengths = [len(ko.split()) for _, ko in drawn]
    assert statistics.mean(en_lengths) > en3 + 2.5
    assert statistics.mean(ko_lengths) > ko3 + 1.5
    assert max(en_lengths) == grammar.MAX_WORDS and max(ko_lengths) <= grammar.MAX_WORDS
    assert max(en_lengths) > max(len(en.split()) for en, _ in pairs)


def test_bad_arguments_raise_naming_them(task):
    with pytest.raises(ValueError, match="seed"):
        grammar.GrammarTask(seed="0")
    with pytest.raises(ValueError, match="epoch"):
        task.train_pairs(-1, 5)
    with pytest.raises(ValueError, match="n must"):
        task.train_examples(0, -3)
    with pytest.raises(ValueError, match="n must"):
        task.valid_pairs(1.5)
    assert task.test_pairs(0) == [] and task.train_pairs(0, 0) == []


# ------------------------------------------------------------------------------ BLEU
def test_bleu_is_100_for_identical_and_0_for_disjoint_corpora(sample):
    korean = [ko for _, ko in sample[:200]]
    assert grammar.corpus_bleu(korean, korean) == pytest.approx(100.0)
    assert grammar.corpus_bleu(["고양이가 생선을 먹는다"], ["개가 물을 마셨다"]) == 0.0
    # corpus BLEU's convention: without a single 4-gram in the corpus, the score is 0
    assert grammar.corpus_bleu(["나는 잤다"], ["나는 잤다"]) == 0.0


def test_bleu_matches_the_formula_and_sacrebleu_on_a_hand_made_example():
    hypotheses = ["고양이가 생선을 먹었고 개가 잤다", "나는 잤다"]
    references = ["고양이가 생선을 먹었고 개가 놀았다", "나는 집에서 잤다"]
    # n-gram matches / counts over the corpus, words as tokens: 1-grams (4 + 2) / (5 + 2),
    # 2-grams (3 + 0) / (4 + 1), 3-grams 2 / 3, 4-grams 1 / 2; 7 words against 8
    precisions = [6 / 7, 3 / 5, 2 / 3, 1 / 2]
    brevity = math.exp(1 - 8 / 7)
    expected = 100 * brevity * math.exp(sum(map(math.log, precisions)) / 4)
    assert grammar.corpus_bleu(hypotheses, references) == pytest.approx(expected, abs=1e-9)
    direct = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none").score
    assert grammar.corpus_bleu(hypotheses, references) == pytest.approx(direct, abs=1e-9)
    # characters as tokens would give another score: the words are what is counted
    chars = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="char").score
    assert abs(chars - expected) > 1


def test_bleu_needs_no_network():
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('no network in this test')\n"
        "socket.socket.connect = socket.create_connection = refuse\n"
        "from course_lib.grammar import corpus_bleu\n"
        "print(corpus_bleu(['어제 나는 집에서 잤다'], ['어제 나는 집에서 잤다']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HTTPS_PROXY": "http://127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(100.0)


def test_bleu_rejects_bad_corpora_naming_the_argument():
    with pytest.raises(ValueError, match="hypotheses is empty"):
        grammar.corpus_bleu([], [])
    with pytest.raises(ValueError, match="hypotheses has 2 sentences but references has 1"):
        grammar.corpus_bleu(["a b", "c d"], ["a b"])
    with pytest.raises(ValueError, match=r"references\[1\] is a list"):
        grammar.corpus_bleu(["a b", "c d"], ["a b", ["c", "d"]])
    with pytest.raises(ValueError, match="hypotheses must be a list"):
        grammar.corpus_bleu("a b", ["a b"])
