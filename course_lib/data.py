"""Synthetic sequence-to-sequence data, generated offline and reproducible with a seed.

Two tasks whose alignments you can read off a heatmap:

* **dates** — many human date formats, English and Korean ("Tuesday, March 3, 2020",
  "3 Mar 20", "2020년 3월 3일 화요일") → ISO 8601 ("2020-03-03"). Within each field the
  alignment is monotone; fields move as blocks when a format puts the year last.
* **en-ko** — a toy English→Korean translation from a small grammar and lexicon. English is
  subject–verb–object, Korean subject–object–verb with particles ("the cat eats fish" →
  "고양이가 생선을 먹는다"), so the alignment between the verb and its object crosses.

Around them: a :class:`Vocab` with PAD/BOS/EOS/UNK, encode/decode, seeded train/valid/test
splits (:class:`Task`), and padded batches with valid lengths (:class:`Batch`).

And two position-copying tasks of fixed length, whose correct attention is known in advance
(chapter 4): :func:`offset_task` (each position outputs the tokens at given offsets) and
:func:`reverse_task` (position i outputs token L − 1 − i), batched by :func:`tensor_batches`;
and :func:`shift_task`, of variable length (chapter 5: position i outputs token i − 1).
Nothing is downloaded: every example comes from the generators below.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

Pair = tuple[tuple[str, ...], tuple[str, ...]]  # (source tokens, target tokens)


# --------------------------------------------------------------------------- vocabulary


class Vocab:
    """Token ↔ id maps. Ids 0–3 are always PAD, BOS, EOS, UNK, in that order.

    Args:
        tokens: the ordinary tokens, in the order their ids should follow the specials;
            duplicates and specials among them are ignored.
    """

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for token in tokens:
            if token not in self.itos:
                self.itos.append(token)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {self.itos[4:12]}...)"

    def encode(self, tokens: Sequence[str], bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of ``tokens`` (UNK for unknown ones), optionally wrapped in BOS ... EOS."""
        ids = [self.stoi.get(t, UNK_ID) for t in tokens]
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """Tokens of ``ids``, stopping at the first EOS and dropping PAD and BOS."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        tokens = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                tokens.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return tokens

    def to_list(self) -> list[str]:
        """Every token in id order (store it in a checkpoint; ``Vocab(v.to_list())`` == v)."""
        return list(self.itos)


# --------------------------------------------------------------------------- dates

MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
KO_WEEKDAYS = "월 화 수 목 금 토 일".split()  # 월요일 (Monday) ... 일요일 (Sunday)
FIRST_YEAR, LAST_YEAR = 1950, 2049  # two-digit years: 50–99 → 19xx, 00–49 → 20xx


def _ordinal(day: int) -> str:
    if day in (11, 12, 13):
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th') }"


# Each format turns a date into one human-written string. English first, then Korean.
DATE_FORMATS: dict[str, Callable[[dt.date], str]] = {
    "Tuesday, March 3, 2020": lambda d: (
        f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}"
    ),
    "March 3, 2020": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "Mar 3, 2020": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    "March 3rd, 2020": lambda d: f"{MONTHS[d.month - 1]} {_ordinal(d.day)}, {d.year}",
    "3 March 2020": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    "3 Mar 20": lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year % 100:02d}",
    "Tue 3 Mar 2020": lambda d: (
        f"{WEEKDAYS[d.weekday()][:3]} {d.day} {MONTHS[d.month - 1][:3]} {d.year}"
    ),
    "the 3rd of March, 2020": lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",
    "03.03.2020": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "2020년 3월 3일": lambda d: f"{d.year}년 {d.month}월 {d.day}일",
    "2020년 3월 3일 화요일": lambda d: (
        f"{d.year}년 {d.month}월 {d.day}일 {KO_WEEKDAYS[d.weekday()]}요일"
    ),
    "2020년 3월 3일 (화)": lambda d: (
        f"{d.year}년 {d.month}월 {d.day}일 ({KO_WEEKDAYS[d.weekday()]})"
    ),
    "20년 3월 3일": lambda d: f"{d.year % 100:02d}년 {d.month}월 {d.day}일",
    "2020. 3. 3.": lambda d: f"{d.year}. {d.month}. {d.day}.",
    "2020.03.03": lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",
}


SPACE = "_"  # how a space is shown as a token (no date format contains "_")


def tokenize_date(text: str) -> list[str]:
    """Characters of a date string, lower-cased, with each space shown as ``_``.

    Characters keep the vocabulary small and closed (no unknown month spellings) and make
    the inputs long enough for the fixed-context bottleneck to show.
    """
    return [SPACE if c == " " else c for c in text.strip().lower()]


def tokenize_iso(text: str) -> list[str]:
    """An ISO date, one character per token: "2020-03-03" → ["2", "0", "2", "0", "-", ...]."""
    return list(text.strip())


def date_source_vocab() -> Vocab:
    """Every character any date format can produce, in a fixed order."""
    chars: set[str] = set()
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(366)]
    for fmt in DATE_FORMATS.values():
        for d in days:
            chars.update(tokenize_date(fmt(d)))
    chars.update("0123456789")
    return Vocab(sorted(chars))


def date_target_vocab() -> Vocab:
    return Vocab(list("0123456789-"))


def random_date(rng: random.Random) -> dt.date:
    first, last = dt.date(FIRST_YEAR, 1, 1), dt.date(LAST_YEAR, 12, 31)
    return first + dt.timedelta(days=rng.randrange((last - first).days + 1))


def date_example(rng: random.Random, fmt: str | None = None) -> tuple[str, str]:
    """One (human date, ISO date) pair; the format is drawn at random unless given."""
    date = random_date(rng)
    fmt = fmt if fmt is not None else rng.choice(list(DATE_FORMATS))
    return DATE_FORMATS[fmt](date), date.isoformat()


# --------------------------------------------------------------------------- EN -> KO


def has_batchim(word: str) -> bool:
    """Whether a Korean word ends in a final consonant (받침), which picks its particles.

    A precomposed Hangul syllable is ``0xAC00 + (initial·21 + vowel)·28 + final``; final 0
    means none. 학생 ends in ㅇ (batchim), 고양이 in a vowel (none).
    """
    code = ord(word[-1]) - 0xAC00
    if not 0 <= code < 11172:
        raise ValueError(f"{word!r} does not end in a Hangul syllable")
    return code % 28 != 0


def particle(word: str, role: str) -> str:
    """``word`` with its particle: topic 은/는, subject 이/가, object 을/를, or copula 이다/다."""
    after_consonant, after_vowel = {
        "topic": ("은", "는"),
        "subject": ("이", "가"),
        "object": ("을", "를"),
        "copula": ("이다", "다"),
    }[role]
    return word + (after_consonant if has_batchim(word) else after_vowel)


# Pronoun subjects: English form, Korean topic form, whether English takes "is"/"eats" (3sg).
PRONOUNS = {
    "i": ("나는", "1sg"),
    "you": ("너는", "2"),
    "he": ("그는", "3sg"),
    "she": ("그녀는", "3sg"),
    "we": ("우리는", "pl"),
    "they": ("그들은", "pl"),
}
PEOPLE = {
    "student": "학생",
    "teacher": "선생님",
    "doctor": "의사",
    "child": "아이",
    "friend": "친구",
}
ANIMALS = {"cat": "고양이", "dog": "개", "bird": "새"}
ADJECTIVES = {"big": "큰", "small": "작은", "good": "좋은", "red": "빨간"}
# object noun -> Korean; the verbs that take it are listed with the verbs.
OBJECTS = {
    "fish": "생선",
    "bread": "빵",
    "apple": "사과",
    "rice": "밥",
    "water": "물",
    "milk": "우유",
    "book": "책",
    "letter": "편지",
    "song": "노래",
    "movie": "영화",
}
MASS_NOUNS = {"fish", "bread", "rice", "water", "milk"}
# verb: (base, 3sg present, past), (Korean present, Korean past), objects it takes
# verb: English (base, 3sg present, past); Korean (present, past), then the connective forms
# that join a first clause to a second ("먹고", "먹었고": "eats and", "ate and"); the objects
# it takes.
VERBS = {
    "eat": (
        ("eat", "eats", "ate"),
        ("먹는다", "먹었다", "먹고", "먹었고"),
        ("fish", "bread", "apple", "rice"),
    ),
    "drink": (
        ("drink", "drinks", "drank"),
        ("마신다", "마셨다", "마시고", "마셨고"),
        ("water", "milk"),
    ),
    "read": (("read", "reads", "read"), ("읽는다", "읽었다", "읽고", "읽었고"), ("book", "letter")),
    "write": (
        ("write", "writes", "wrote"),
        ("쓴다", "썼다", "쓰고", "썼고"),
        ("book", "letter", "song"),
    ),
    "like": (
        ("like", "likes", "liked"),
        ("좋아한다", "좋아했다", "좋아하고", "좋아했고"),
        tuple(OBJECTS),
    ),
    "see": (
        ("see", "sees", "saw"),
        ("본다", "봤다", "보고", "봤고"),
        ("movie", "bird", "cat", "dog"),
    ),
    "buy": (
        ("buy", "buys", "bought"),
        ("산다", "샀다", "사고", "샀고"),
        ("fish", "bread", "apple", "book", "milk"),
    ),
    "sing": (("sing", "sings", "sang"), ("부른다", "불렀다", "부르고", "불렀고"), ("song",)),
}
PLACES = {
    "at home": "집에서",
    "at school": "학교에서",
    "in the park": "공원에서",
    "in the library": "도서관에서",
}
TIMES = {"today": ("오늘", "present"), "yesterday": ("어제", "past")}
OBJECT_WORDS = {**OBJECTS, **ANIMALS}


# The grammar builds each Korean word together with the position of the English word it
# translates (its gold alignment): (Korean word, English index). Articles, "and", "am/is/are"
# and the prepositions of places have no Korean word of their own.
Aligned = list[tuple[str, int]]


def _subject(rng: random.Random) -> tuple[list[str], Aligned, str]:
    """English words, aligned Korean words and the English agreement of a random subject."""
    if rng.random() < 0.4:
        en = rng.choice(list(PRONOUNS))
        ko, agreement = PRONOUNS[en]
        return [en], [(ko, 0)], agreement
    noun = rng.choice(list({**PEOPLE, **ANIMALS}))
    ko_noun = {**PEOPLE, **ANIMALS}[noun]
    en, ko = ["the"], []
    if rng.random() < 0.3:
        adj = rng.choice(list(ADJECTIVES))
        en.append(adj)
        ko.append((ADJECTIVES[adj], 1))
    return en + [noun], ko + [(particle(ko_noun, "subject"), len(en))], "3sg"


def _object(rng: random.Random, noun: str) -> tuple[list[str], Aligned]:
    en, ko = [], []
    if noun not in MASS_NOUNS:
        en.append("the" if noun in ANIMALS else ("an" if noun[0] in "aeiou" else "a"))
    if noun not in MASS_NOUNS and rng.random() < 0.3:
        adj = rng.choice(list(ADJECTIVES))
        en.append(adj)
        ko.append((ADJECTIVES[adj], 1))
        if en[0] == "an":
            en[0] = "an" if adj[0] in "aeiou" else "a"
        elif en[0] == "a" and adj[0] in "aeiou":
            en[0] = "an"
    return en + [noun], ko + [(particle(OBJECT_WORDS[noun], "object"), len(en))]


def _shifted(ko: Aligned, offset: int) -> Aligned:
    """Korean words aligned to English words that now start at ``offset``."""
    return [(word, offset + i) for word, i in ko]


def _clause(rng: random.Random, joined: bool = False) -> tuple[list[str], Aligned]:
    """English words and aligned Korean words of one transitive clause.

    English:  SUBJECT VERB OBJECT [PLACE] [TIME]     ("the cat ate fish at home yesterday")
    Korean:   [TIME] SUBJECT [PLACE] OBJECT VERB     ("어제 고양이가 집에서 생선을 먹었다")

    ``joined``: the clause is followed by "and" and a second clause, so its Korean verb takes
    the connective form (먹었고).
    """
    en_subj, ko_subj, agreement = _subject(rng)
    verb = rng.choice(list(VERBS))
    (base, third, past), ko_forms, objects = VERBS[verb]
    time = rng.choice([None, None, "today", "yesterday"])
    tense = "past" if time == "yesterday" or (time is None and rng.random() < 0.5) else "present"
    en_verb = past if tense == "past" else (third if agreement == "3sg" else base)
    ko_verb = ko_forms[(2 if joined else 0) + (1 if tense == "past" else 0)]
    en_obj, ko_obj = _object(rng, rng.choice(objects))
    place = rng.choice([None, None, *PLACES])
    en = [*en_subj, en_verb, *en_obj]
    ko = [*ko_subj]
    if place:
        en += place.split()
        ko.append((PLACES[place], len(en) - 1))  # 집에서 translates "at home": aligned to "home"
    ko += [*_shifted(ko_obj, len(en_subj) + 1), (ko_verb, len(en_subj))]
    if time:
        en.append(time)
        ko.insert(0, (TIMES[time][0], len(en) - 1))
    return en, ko


def aligned_translation_example(rng: random.Random) -> tuple[str, str, tuple[int, ...]]:
    """One (English, Korean) sentence pair from the toy grammar, with its gold alignment.

    Mostly one clause, subject–verb–object in English and subject–object–verb in Korean
    ("the cat ate fish at home yesterday" → "어제 고양이가 집에서 생선을 먹었다"); one time in
    three, two clauses joined by "and", which Korean expresses with the connective verb form
    ("the cat eats fish and the dog drinks milk" → "고양이가 생선을 먹고 개가 우유를 마신다");
    one time in six, a copula sentence ("i am a student" → "나는 학생이다").

    Returns:
        English text, Korean text, and for each Korean word the index of the English word it
        translates (어제 → "yesterday", 집에서 → "home", 학생이다 → "student").
    """
    if rng.random() < 1 / 6:
        pronoun = rng.choice(list(PRONOUNS))
        ko_subj, agreement = PRONOUNS[pronoun]
        noun = rng.choice(list(PEOPLE))
        if agreement == "pl":  # "we are students", "they are children"
            en = [pronoun, "are", "children" if noun == "child" else noun + "s"]
        else:  # "i am a student", "you are a doctor", "she is a teacher"
            be = {"1sg": "am", "3sg": "is"}.get(agreement, "are")
            en = [pronoun, be, "a", noun]
        ko = [(ko_subj, 0), (particle(PEOPLE[noun], "copula"), len(en) - 1)]
    elif rng.random() < 0.4:
        en_first, ko_first = _clause(rng, joined=True)
        en_second, ko_second = _clause(rng)
        en = [*en_first, "and", *en_second]
        ko = [*ko_first, *_shifted(ko_second, len(en_first) + 1)]
    else:
        en, ko = _clause(rng)
    return " ".join(en), " ".join(word for word, _ in ko), tuple(i for _, i in ko)


def translation_example(rng: random.Random) -> tuple[str, str]:
    """One (English, Korean) sentence pair (:func:`aligned_translation_example` without the
    alignment; the same pair for the same random state)."""
    return aligned_translation_example(rng)[:2]


def tokenize_words(text: str) -> list[str]:
    """Whitespace tokens, lower-cased: "The cat eats fish" → ["the", "cat", "eats", "fish"]."""
    return text.lower().split()


def translation_vocabs() -> tuple[Vocab, Vocab]:
    """English and Korean vocabularies of everything the grammar can say, in a fixed order."""
    en = {"the", "a", "an", "and", "am", "is", "are", *PRONOUNS, *ANIMALS, *ADJECTIVES, *OBJECTS}
    en |= {w for noun in PEOPLE for w in (noun, "children" if noun == "child" else noun + "s")}
    en |= {w for forms, _, _ in VERBS.values() for w in forms}
    en |= {w for place in PLACES for w in place.split()} | set(TIMES)
    ko = {topic for topic, _ in PRONOUNS.values()} | set(ADJECTIVES.values())
    ko |= {particle(noun, "subject") for noun in {**PEOPLE, **ANIMALS}.values()}
    ko |= {particle(noun, "copula") for noun in PEOPLE.values()}
    ko |= {particle(noun, "object") for noun in OBJECT_WORDS.values()}
    ko |= {w for _, forms, _ in VERBS.values() for w in forms}
    ko |= set(PLACES.values()) | {word for word, _ in TIMES.values()}
    return Vocab(sorted(en)), Vocab(sorted(ko))


# --------------------------------------------------------------------------- tasks & splits


def unique_examples(
    make: Callable[[random.Random], tuple], n: int, seed: int, max_tries: int = 50
) -> list[tuple]:
    """``n`` examples ``(source, target, ...)`` with distinct sources, drawn with
    ``random.Random(seed)``."""
    rng = random.Random(seed)
    seen: dict[str, tuple] = {}
    tries = 0
    while len(seen) < n:
        example = make(rng)  # (source, target, anything else the maker adds)
        if example[0] in seen:
            tries += 1
            if tries > max_tries * n:
                raise ValueError(f"could not draw {n} distinct examples (got {len(seen)})")
            continue
        seen[example[0]] = example
    return list(seen.values())


def split(
    items: Sequence, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[list, list, list]:
    """Shuffle ``items`` with ``seed`` and cut them into train / valid / test."""
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    order = list(items)
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_valid = round(fractions[1] * len(order))
    return order[:n_train], order[n_train : n_train + n_valid], order[n_train + n_valid :]


@dataclass
class Task:
    """A sequence-to-sequence task: vocabularies, tokenizers and the three splits.

    Each split holds ``(source text, target text)`` pairs; :meth:`pairs` gives them as
    tokens, :meth:`encode` as ids ready for :func:`make_batches`.
    """

    name: str
    src_vocab: Vocab
    tgt_vocab: Vocab
    tokenize_source: Callable[[str], list[str]]
    tokenize_target: Callable[[str], list[str]]
    join_target: str  # how target tokens are joined back into text: "" or " "
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    # source text -> for each target word, the index of the source word it translates
    alignments: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def split(self, name: str) -> list[tuple[str, str]]:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {name!r}")
        return getattr(self, name)

    def encode_source(self, text: str) -> list[int]:
        """Source ids (no BOS/EOS: the encoder reads the text only)."""
        return self.src_vocab.encode(self.tokenize_source(text))

    def encode_target(self, text: str) -> list[int]:
        """Target ids wrapped as BOS ... EOS (what teacher forcing needs)."""
        return self.tgt_vocab.encode(self.tokenize_target(text), bos=True, eos=True)

    def decode_target(self, ids: Iterable[int] | torch.Tensor) -> str:
        return self.join_target.join(self.tgt_vocab.decode(ids))

    def encode(self, split: str) -> list[tuple[list[int], list[int]]]:
        """``(source ids, target ids)`` for every example of ``split``."""
        return [(self.encode_source(s), self.encode_target(t)) for s, t in self.split(split)]

    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in ("train", "valid", "test")}


def dates_task(n: int = 20_000, seed: int = 0) -> Task:
    """Date normalisation: ``n`` distinct human dates split 80/10/10, reproducible from ``seed``.

    >>> task = dates_task(100)
    >>> task.train[0]  # doctest: +SKIP
    ('2011년 5월 22일 (일)', '2011-05-22')
    """
    pairs = unique_examples(date_example, n, seed)
    train, valid, test = split(pairs, seed=seed)
    return Task(
        "dates",
        date_source_vocab(),
        date_target_vocab(),
        tokenize_date,
        tokenize_iso,
        "",
        train,
        valid,
        test,
    )


def translation_task(n: int = 4_000, seed: int = 0) -> Task:
    """Toy English→Korean translation: ``n`` distinct sentences split 80/10/10, with the gold
    word alignment of each (``Task.alignments``).

    The vocabularies cover the whole grammar (not just the drawn sentences), so any
    sentence the grammar can produce encodes without UNK.
    """
    examples = unique_examples(aligned_translation_example, n, seed)
    train, valid, test = split([(en, ko) for en, ko, _ in examples], seed=seed)
    src_vocab, tgt_vocab = translation_vocabs()
    return Task(
        "en-ko",
        src_vocab,
        tgt_vocab,
        tokenize_words,
        tokenize_words,
        " ",
        train,
        valid,
        test,
        {en: alignment for en, _, alignment in examples},
    )


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """Padded source and target ids with their valid lengths.

    ``tgt`` holds BOS y1 ... yn EOS, then PAD: the decoder reads ``tgt[:, :-1]`` and is
    trained to predict ``tgt[:, 1:]`` (teacher forcing).

    Shape:
        src (B, S), src_lens (B,), tgt (B, T + 1), tgt_lens (B,) — lengths count the
        non-PAD tokens (for ``tgt`` that includes BOS and EOS).
    """

    src: torch.Tensor
    src_lens: torch.Tensor
    tgt: torch.Tensor
    tgt_lens: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.src, self.src_lens, self.tgt, self.tgt_lens)))

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def num_target_tokens(self) -> int:
        """Tokens the decoder predicts (everything after BOS, EOS included)."""
        return int((self.tgt_lens - 1).sum())


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``sequences`` of ids into one tensor and return it with their lengths.

    Shape:
        B sequences, the longest of length S -> ids (B, S) long, lengths (B,) long
    """
    if len(sequences) == 0:
        raise ValueError("pad needs at least one sequence")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if int(lengths.min()) == 0:
        raise ValueError("pad got an empty sequence: every sequence needs at least one token")
    ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return ids, lengths


def collate(examples: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Batch:
    """``(source ids, target ids)`` pairs -> one padded :class:`Batch`."""
    src, src_lens = pad([s for s, _ in examples])
    tgt, tgt_lens = pad([t for _, t in examples])
    return Batch(src, src_lens, tgt, tgt_lens)


def make_batches(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
) -> Iterator[Batch]:
    """Padded batches of ``examples``; with ``shuffle``, in an order fixed by ``seed``.

    The last batch may be smaller. Pass a different seed each epoch for a new order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]])


# ------------------------------------------------------------------ position-copying tasks

IGNORE_INDEX = -100  # a target that F.cross_entropy skips (its default ignore_index)


def offset_task(
    n: int, L: int, V: int, seed: int, offsets: Sequence[int] = (-2, 3)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences; at each position i, the targets are the tokens at i + offset.

    A target whose source position falls outside the sequence is :data:`IGNORE_INDEX` (no
    wrap-around), so the loss and the accuracy skip it.

    Args:
        n: the number of sequences.
        L: their length.
        V: the vocabulary size; tokens are uniform in 0..V-1.
        seed: seeds a private generator (the global one is left alone).
        offsets: the K relative positions to copy from.

    Returns:
        (tokens, targets) with ``targets[b, i, k] = tokens[b, i + offsets[k]]``.

    Shape:
        tokens (n, L) long, targets (n, L, K) long
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(V, (n, L), generator=gen)  # (n, L)
    i = torch.arange(L)  # (L,) the query positions
    targets = []
    for offset in offsets:
        source = i + offset  # (L,) where each position copies from
        inside = (source >= 0) & (source < L)  # (L,)
        copied = tokens[:, source.clamp(0, L - 1)]  # (n, L)
        targets.append(copied.masked_fill(~inside, IGNORE_INDEX))
    return tokens, torch.stack(targets, dim=-1)  # K × (n, L) -> (n, L, K)


def reverse_task(n: int, L: int, V: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token sequences and their reversals: ``targets[b, i, 0] = tokens[b, L - 1 - i]``.

    Shape:
        tokens (n, L) long, targets (n, L, 1) long (one output per position, as
        :func:`offset_task` lays them out)
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(V, (n, L), generator=gen)  # (n, L)
    return tokens, tokens.flip(1)[..., None]  # (n, L) -> (n, L, 1)


def shift_task(
    n: int, min_len: int, max_len: int, V: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sequences of random lengths; at position i the target is the token at i − 1.

    Sequences are right-padded with the id V (PAD, after the real tokens 0 … V − 1). The first
    position (no source) and the padding get :data:`IGNORE_INDEX`.

    Args:
        n: the number of sequences.
        min_len, max_len: lengths are uniform in min_len … max_len.
        V: the number of real tokens.
        seed: seeds a private generator.

    Shape:
        tokens (n, max_len) long, targets (n, max_len, 1) long
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=gen)  # (n,)
    tokens = torch.randint(V, (n, max_len), generator=gen)  # (n, max_len)
    real = torch.arange(max_len)[None, :] < lengths[:, None]  # (n, max_len)
    tokens = tokens.masked_fill(~real, V)
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, 1:] = tokens[:, :-1]  # target i = token i − 1
    targets = targets.masked_fill(~real, IGNORE_INDEX)
    return tokens, targets[..., None]  # (n, max_len) -> (n, max_len, 1)


def tensor_batches(
    tokens: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled ``(tokens, targets)`` batches of a fixed set, in an order fixed by ``seed``."""
    order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(tokens), batch_size):
        rows = order[start : start + batch_size]
        yield tokens[rows], targets[rows]
