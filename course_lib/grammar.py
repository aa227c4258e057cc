"""A larger English→Korean grammar, generated on the fly, and corpus BLEU (chapter 7).

Chapter 3's toy grammar (:mod:`course_lib.data`) makes a few thousand short sentences, a
fixed set small enough to memorise. This one scales it up so that training on a GPU is worth
it: a lexicon several times larger (people, animals, things, thirty verbs that take objects,
intransitive verbs, adjectives, places and times), more clause shapes (transitive,
ditransitive, intransitive, adjective predicates, copula, each optionally negated, in the
past, present or future) and up to three clauses joined by "and", "but" and "because".
There is no fixed dataset: :class:`GrammarTask` draws fresh sentences for every epoch,
deterministically from its seed, and holds out a fixed ~2% of all possible sentences for
validation and another ~2% for testing (by a stable hash of the English), so a model is
scored on sentences it can never have seen.

English is subject–verb–object, Korean subject–object–verb with particles chosen by the
final consonant (받침) of each noun, and a "because" clause moves in front of the clause it
explains, so the alignments cross within and between clauses::

    >>> import random
    >>> sentence(random.Random(61))
    ('he loved the engineer but you helped us', '그는 엔지니어를 사랑했지만 너는 우리를 도왔다')
    >>> task = GrammarTask(seed=0)
    >>> examples = task.train_examples(epoch=0, n=10_000)  # fresh (source ids, target ids)
    >>> len(examples), task.valid_pairs(1000) == GrammarTask(seed=0).valid_pairs(1000)
    (10000, True)
    >>> round(corpus_bleu(["어제 고양이가 생선을 먹었다"], ["어제 고양이가 생선을 먹었다"]), 2)
    100.0

Both sides are lower-case, space-separated words (:func:`course_lib.data.tokenize_words`),
and the vocabularies are built from the lexicon, so no generated sentence has an unknown word.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from course_lib.data import Vocab, has_batchim, particle, tokenize_words

# ------------------------------------------------------------------------------ lexicon
# Pronouns: subject form -> (object form, Korean, English agreement). Korean uses the topic
# form (나는) in a main clause and the subject form in a "because" clause; 나 and 너 have
# irregular subject forms (내가, 네가), so those are listed rather than built by particle().
PRONOUNS = {
    "i": ("me", "나", "1sg"),
    "you": ("you", "너", "2"),
    "he": ("him", "그", "3sg"),
    "she": ("her", "그녀", "3sg"),
    "we": ("us", "우리", "pl"),
    "they": ("them", "그들", "pl"),
}
PRONOUN_SUBJECT = {
    "나": "내가",
    "너": "네가",
    "그": "그가",
    "그녀": "그녀가",
    "우리": "우리가",
    "그들": "그들이",
}

PEOPLE = {
    "student": "학생", "teacher": "선생님", "doctor": "의사", "child": "아이", "friend": "친구",
    "mother": "어머니", "father": "아버지", "baby": "아기", "farmer": "농부", "chef": "요리사",
    "singer": "가수", "nurse": "간호사", "soldier": "군인", "writer": "작가", "painter": "화가",
    "boy": "소년", "girl": "소녀", "man": "남자", "woman": "여자", "king": "왕", "queen": "여왕",
    "neighbor": "이웃", "artist": "예술가", "actor": "배우", "pilot": "조종사",
    "engineer": "엔지니어",
}  # fmt: skip
ANIMALS = {
    "cat": "고양이", "dog": "개", "bird": "새", "horse": "말", "cow": "소", "rabbit": "토끼",
    "tiger": "호랑이", "monkey": "원숭이", "bear": "곰", "mouse": "쥐", "duck": "오리",
    "lion": "사자",
}  # fmt: skip
IRREGULAR_PLURALS = {"child": "children", "man": "men", "woman": "women", "mouse": "mice"}

# Things: English -> (Korean, kind). The kind says which verbs and adjectives go with it.
THINGS = {
    "fish": ("생선", "food"), "bread": ("빵", "food"), "rice": ("밥", "food"),
    "soup": ("수프", "food"), "kimchi": ("김치", "food"), "pizza": ("피자", "food"),
    "apple": ("사과", "food"), "cake": ("케이크", "food"), "egg": ("달걀", "food"),
    "banana": ("바나나", "food"), "orange": ("오렌지", "food"), "cookie": ("쿠키", "food"),
    "sandwich": ("샌드위치", "food"),
    "water": ("물", "drink"), "milk": ("우유", "drink"), "coffee": ("커피", "drink"),
    "tea": ("차", "drink"), "juice": ("주스", "drink"),
    "book": ("책", "text"), "letter": ("편지", "text"), "newspaper": ("신문", "text"),
    "magazine": ("잡지", "text"), "poem": ("시", "text"), "story": ("이야기", "text"),
    "email": ("이메일", "text"),
    "song": ("노래", "media"), "movie": ("영화", "media"), "music": ("음악", "media"),
    "bag": ("가방", "item"), "hat": ("모자", "item"), "computer": ("컴퓨터", "item"),
    "phone": ("전화기", "item"), "box": ("상자", "item"), "ball": ("공", "item"),
    "key": ("열쇠", "item"), "umbrella": ("우산", "item"), "pencil": ("연필", "item"),
    "cup": ("컵", "item"), "plate": ("접시", "item"), "clock": ("시계", "item"),
    "gift": ("선물", "item"), "map": ("지도", "item"), "picture": ("그림", "item"),
    "photo": ("사진", "item"), "ticket": ("표", "item"), "bicycle": ("자전거", "item"),
    "flower": ("꽃", "item"),
    "car": ("자동차", "fixed"), "house": ("집", "fixed"), "room": ("방", "fixed"),
    "door": ("문", "fixed"), "window": ("창문", "fixed"), "table": ("탁자", "fixed"),
    "chair": ("의자", "fixed"), "tree": ("나무", "fixed"),
}  # fmt: skip
# Uncountable in English: no "a"/"an" (Korean has no articles at all).
MASS_NOUNS = frozenset(
    "fish bread rice soup kimchi pizza water milk coffee tea juice music".split()
)

# Korean predicates are listed as four forms, from which every ending is built by plain
# concatenation (which is regular even for irregular verbs: 듣고, 들었고, 들을 것이다):
#   stem (+고, +지만, +기 때문에, +지 않는다), present statement, past stem (+다, +고, ...),
#   future adnominal (+ 것이다).
# Verbs that take objects: English base / 3sg / past, then those four Korean forms.
VERB_FORMS = {
    "eat": ("eat eats ate", "먹 먹는다 먹었 먹을"),
    "drink": ("drink drinks drank", "마시 마신다 마셨 마실"),
    "read": ("read reads read", "읽 읽는다 읽었 읽을"),
    "write": ("write writes wrote", "쓰 쓴다 썼 쓸"),
    "like": ("like likes liked", "좋아하 좋아한다 좋아했 좋아할"),
    "see": ("see sees saw", "보 본다 봤 볼"),
    "buy": ("buy buys bought", "사 산다 샀 살"),
    "sing": ("sing sings sang", "부르 부른다 불렀 부를"),  # 노래를 부른다: sing a song
    "make": ("make makes made", "만들 만든다 만들었 만들"),  # ㄹ-stem: 만든다, 만들 것이다
    "hear": ("hear hears heard", "듣 듣는다 들었 들을"),  # ㄷ-irregular: 들었다
    "help": ("help helps helped", "돕 돕는다 도왔 도울"),  # ㅂ-irregular: 도왔다
    "meet": ("meet meets met", "만나 만난다 만났 만날"),
    "find": ("find finds found", "찾 찾는다 찾았 찾을"),
    "lose": ("lose loses lost", "잃어버리 잃어버린다 잃어버렸 잃어버릴"),
    "wash": ("wash washes washed", "씻 씻는다 씻었 씻을"),
    "open": ("open opens opened", "열 연다 열었 열"),
    "close": ("close closes closed", "닫 닫는다 닫았 닫을"),
    "bring": ("bring brings brought", "가져오 가져온다 가져왔 가져올"),
    "draw": ("draw draws drew", "그리 그린다 그렸 그릴"),
    "sell": ("sell sells sold", "팔 판다 팔았 팔"),
    "want": ("want wants wanted", "원하 원한다 원했 원할"),
    "cook": ("cook cooks cooked", "요리하 요리한다 요리했 요리할"),
    "love": ("love loves loved", "사랑하 사랑한다 사랑했 사랑할"),
    "clean": ("clean cleans cleaned", "청소하 청소한다 청소했 청소할"),
    "catch": ("catch catches caught", "잡 잡는다 잡았 잡을"),
    "throw": ("throw throws threw", "던지 던진다 던졌 던질"),
    "teach": ("teach teaches taught", "가르치 가르친다 가르쳤 가르칠"),
    "give": ("give gives gave", "주 준다 줬 줄"),
    "send": ("send sends sent", "보내 보낸다 보냈 보낼"),
    "show": ("show shows showed", "보여주 보여준다 보여줬 보여줄"),
}
# Who does it and to what: each spec lists kinds ("person", "animal", "food", ...) or nouns.
# "person" includes the pronouns.
TRANSITIVE = {
    "eat": ("person animal", "food"),
    "drink": ("person animal", "drink"),
    "read": ("person", "text"),
    "write": ("person", "letter poem story email book song"),
    "like": ("person animal", "food drink text media item person animal"),
    "see": ("person animal", "media item car house tree person animal"),
    "buy": ("person", "food drink text item car house table chair"),
    "sing": ("person bird", "song"),
    "make": ("person", "cake bread soup kimchi sandwich pizza box bag hat table chair"),
    "hear": ("person animal", "song music story"),
    "help": ("person", "person animal"),
    "meet": ("person", "person"),
    "find": ("person animal", "item animal"),
    "lose": ("person", "item"),
    "wash": ("person", "apple cup plate"),
    "open": ("person", "window door box bag book"),
    "close": ("person", "window door box book"),
    "bring": ("person", "food drink text item"),
    "draw": ("person", "picture map flower tree house car animal"),
    "sell": ("person", "food drink text item car house"),
    "want": ("person animal", "food drink item car house"),
    "cook": ("person", "rice fish soup egg"),
    "love": ("person animal", "music person animal"),
    "clean": ("person", "room house"),
    "catch": ("person animal", "ball mouse bird rabbit duck"),
    "throw": ("person", "ball apple hat key"),
    "teach": ("person", "music song"),
}
# "the teacher gives the student a book" -> 선생님이 학생에게 책을 준다 (the recipient takes
# 에게). The subject is a person; the recipient a person or an animal.
DITRANSITIVE = {
    "give": "food drink text item",
    "send": "letter email gift photo",
    "show": "picture photo map book",
    "teach": "music song",
    "sell": "food drink text item car",
    "bring": "food drink text item",
    "write": "letter email poem",
}
# Verbs without an object: English forms, Korean forms, who does it.
INTRANSITIVE = {
    "sleep": ("sleep sleeps slept", "자 잔다 잤 잘", "person animal"),
    "run": ("run runs ran", "달리 달린다 달렸 달릴", "person animal"),
    "walk": ("walk walks walked", "걷 걷는다 걸었 걸을", "person animal"),  # ㄷ-irregular
    "laugh": ("laugh laughs laughed", "웃 웃는다 웃었 웃을", "person"),
    "cry": ("cry cries cried", "울 운다 울었 울", "person animal"),
    "swim": ("swim swims swam", "수영하 수영한다 수영했 수영할", "person animal"),
    "dance": ("dance dances danced", "춤추 춤춘다 춤췄 춤출", "person"),
    "work": ("work works worked", "일하 일한다 일했 일할", "person"),
    "study": ("study studies studied", "공부하 공부한다 공부했 공부할", "person"),
    "play": ("play plays played", "놀 논다 놀았 놀", "person animal"),
    "rest": ("rest rests rested", "쉬 쉰다 쉬었 쉴", "person animal"),
    "sing": ("sing sings sang", "노래하 노래한다 노래했 노래할", "person bird"),
    "wait": ("wait waits waited", "기다리 기다린다 기다렸 기다릴", "person animal"),
}
# Adjectives: English -> (Korean attributive form, kinds it describes, predicate forms or
# None). "the dog is hungry" -> 개가 배고프다; the predicate is negated with 않다, not 않는다.
# big/small describe no people: 큰어머니 and 작은아버지 are an aunt and an uncle.
ADJECTIVES = {
    "big": ("큰", "animal food item fixed", "크 크다 컸 클"),
    "small": ("작은", "animal food item fixed", "작 작다 작았 작을"),
    "good": ("좋은", "person animal food drink text media item fixed", "좋 좋다 좋았 좋을"),
    "happy": ("행복한", "person animal", "행복하 행복하다 행복했 행복할"),
    "sad": ("슬픈", "person animal media text", "슬프 슬프다 슬펐 슬플"),
    "tired": ("피곤한", "person animal", "피곤하 피곤하다 피곤했 피곤할"),
    "busy": ("바쁜", "person", "바쁘 바쁘다 바빴 바쁠"),
    "sick": ("아픈", "person animal", "아프 아프다 아팠 아플"),
    "kind": ("친절한", "person", "친절하 친절하다 친절했 친절할"),
    "hungry": ("배고픈", "person animal", "배고프 배고프다 배고팠 배고플"),
    "young": ("어린", "person animal", "어리 어리다 어렸 어릴"),
    "pretty": ("예쁜", "person animal item fixed", None),
    "red": ("빨간", "text item fixed", None),
    "blue": ("파란", "text item fixed", None),
    "white": ("하얀", "animal item fixed", None),
    "black": ("검은", "animal item fixed", None),
    "heavy": ("무거운", "text item fixed", None),
    "hot": ("뜨거운", "food drink", None),
    "cold": ("차가운", "food drink", None),
    "delicious": ("맛있는", "food drink", None),
}
PLACES = {
    "at home": "집에서", "at school": "학교에서", "in the park": "공원에서",
    "in the library": "도서관에서", "in the kitchen": "부엌에서", "at the market": "시장에서",
    "in the garden": "정원에서", "at the office": "사무실에서", "in the classroom": "교실에서",
    "at the station": "역에서", "in the restaurant": "식당에서", "at the hospital": "병원에서",
}  # fmt: skip
# Time words: English -> (Korean, the tenses they allow). English puts them last, Korean first.
TIMES = {
    "today": ("오늘", ("present", "past", "future")),
    "yesterday": ("어제", ("past",)),
    "tomorrow": ("내일", ("future",)),
    "every day": ("매일", ("present",)),
    "every morning": ("매일 아침", ("present",)),
    "in the morning": ("아침에", ("present", "past", "future")),
    "at night": ("밤에", ("present", "past", "future")),
    "last week": ("지난주에", ("past",)),
    "next week": ("다음 주에", ("future",)),
    "on sunday": ("일요일에", ("present", "past", "future")),
}
TENSES = ("present", "past", "future")
ENDINGS = ("final", "and", "but", "because")  # how a Korean clause ends: 다, -고, -지만, -기 때문에
CONJUNCTIONS = ("and", "but", "because")
MAX_WORDS = 25  # longer draws are redrawn, so both sides stay within this many tokens


def plural(noun: str) -> str:
    """English plural of a person or animal noun: "cat" → "cats", "baby" → "babies"."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    return noun + "s"


# ------------------------------------------------------------------------------ Korean endings


@dataclass(frozen=True)
class Predicate:
    """The Korean forms of a verb, an adjective or a copula that every ending is built from.

    ``complement`` is set for a copula (학생이다): its negation is 학생이 아니다, not 학생이지 않다.
    """

    stem: str  # 먹: + 고 / 지만 / 기 / 지 않는다
    present: str  # 먹는다, 크다, 학생이다
    past: str  # 먹었: + 다 / 고 / 지만 / 기
    future: str | None  # 먹을 (+ 것이다); None for the copula (학생일 것이다 means "must be")
    adjective: bool = False  # negated with 않다 (크지 않다) rather than 않는다
    complement: str | None = None

    @classmethod
    def of(cls, forms: str, adjective: bool = False) -> Predicate:
        return cls(*forms.split(), adjective=adjective)


NOT_VERB = Predicate("않", "않는다", "않았", "않을")
NOT_ADJECTIVE = Predicate("않", "않다", "않았", "않을", adjective=True)
NOT_BE = Predicate("아니", "아니다", "아니었", None, adjective=True)


def copula(noun: str) -> Predicate:
    """Korean for "is a <noun>": 학생이다 (의사다 after a vowel), past 학생이었다 / 의사였다."""
    past = noun + ("이었" if has_batchim(noun) else "였")
    return Predicate(noun + "이", particle(noun, "copula"), past, None, complement=noun)


def conjugate(pred: Predicate, tense: str, ending: str, negated: bool = False) -> list[str]:
    """Korean words of ``pred`` in ``tense`` ending a clause with ``ending``.

    Args:
        pred: the predicate's forms.
        tense: "present", "past" or "future".
        ending: "final" (먹는다), "and" (먹고), "but" (먹지만) or "because" (먹기 때문에).
        negated: put it in the negative (먹지 않는다, 학생이 아니다).

    Returns:
        One to four words: 먹었다; 먹지 않았기 때문에; 먹지 않을 것이기 때문에.
    """
    if negated:
        if pred.complement is not None:
            return [particle(pred.complement, "subject"), *conjugate(NOT_BE, tense, ending)]
        negative = NOT_ADJECTIVE if pred.adjective else NOT_VERB
        return [pred.stem + "지", *conjugate(negative, tense, ending)]
    suffix = {"and": "고", "but": "지만", "because": "기"}.get(ending, "다")
    if tense == "future":
        if pred.future is None:
            raise ValueError(f"{pred.present} has no future form")
        words = [pred.future, "것이" + suffix]
    elif tense == "past":
        words = [pred.past + suffix]
    else:
        words = [pred.present if ending == "final" else pred.stem + suffix]
    return [*words, "때문에"] if ending == "because" else words


# ------------------------------------------------------------------------------ the grammar


def _expand(spec: str, kinds: dict[str, str]) -> tuple[str, ...]:
    """The nouns a spec names: each word is a kind or a noun."""
    names = spec.split()
    return tuple(noun for noun, kind in kinds.items() if kind in names or noun in names)


_KIND = {
    **{noun: "person" for noun in PEOPLE},
    **{noun: "animal" for noun in ANIMALS},
    **{noun: kind for noun, (_, kind) in THINGS.items()},
}
_KOREAN = {**PEOPLE, **ANIMALS, **{noun: ko for noun, (ko, _) in THINGS.items()}}
_ADJECTIVES_OF = {
    noun: tuple(a for a, (_, kinds, _) in ADJECTIVES.items() if kind in kinds.split())
    for noun, kind in _KIND.items()
}


@dataclass(frozen=True)
class _Role:
    """Who or what can fill a slot: nouns, and whether pronouns can."""

    nouns: tuple[str, ...]
    pronouns: bool

    @classmethod
    def of(cls, spec: str) -> _Role:
        return cls(_expand(spec, _KIND), "person" in spec.split())


def _animate_kinds(kinds: str) -> str:
    return " ".join(k for k in kinds.split() if k in ("person", "animal"))


def _verbs(forms: str, korean: str) -> tuple[tuple[str, ...], Predicate]:
    return tuple(forms.split()), Predicate.of(korean)


# Parsed once, as tuples, so that drawing a sentence is a few random choices.
_TRANSITIVE = tuple(
    (*_verbs(*VERB_FORMS[v]), _Role.of(who), _Role.of(what))
    for v, (who, what) in TRANSITIVE.items()
)
_DITRANSITIVE = tuple((*_verbs(*VERB_FORMS[v]), _Role.of(what)) for v, what in DITRANSITIVE.items())
_INTRANSITIVE = tuple(
    (*_verbs(forms, korean), _Role.of(who)) for forms, korean, who in INTRANSITIVE.values()
)
# "the dog is hungry": only people and animals are subjects (things never are).
_PREDICATE_ADJECTIVES = tuple(
    (adj, Predicate.of(forms, adjective=True), _Role.of(_animate_kinds(kinds)))
    for adj, (_, kinds, forms) in ADJECTIVES.items()
    if forms is not None
)
_PERSON, _ANIMATE = _Role.of("person"), _Role.of("person animal")
_PLACES, _TIMES = tuple(PLACES), tuple(TIMES)
_PRONOUNS = tuple(PRONOUNS)
_OBJECT_PRONOUNS = tuple(obj for obj, _, _ in PRONOUNS.values())
_PRONOUN_OF_OBJECT = {obj: subj for subj, (obj, _, _) in PRONOUNS.items()}


@dataclass
class _Clause:
    """One clause: its English words and what its Korean is made of.

    Korean order: [time] subject [place] [recipient] [object] predicate. The ending of the
    predicate depends on what follows the clause, so the Korean is built later.
    """

    en: list[str]
    time: list[str]
    subject: list[str]  # in a main clause: 나는, 고양이가
    subject_in_because: list[str]  # in a "because" clause: 내가, 고양이가
    middle: list[str]  # place, recipient, object
    predicate: Predicate
    tense: str
    negated: bool

    def korean(self, ending: str, in_because: bool) -> list[str]:
        subject = self.subject_in_because if in_because else self.subject
        predicate = conjugate(self.predicate, self.tense, ending, self.negated)
        return [*self.time, *subject, *self.middle, *predicate]


def _article(words: list[str]) -> str:
    return "an" if words[0][0] in "aeiou" else "a"


def _noun_phrase(
    rng: random.Random, noun: str, p_adj: float, p_plural: float, exclude: str = ""
) -> tuple[list[str], list[str], str]:
    """English words, Korean words (the noun last, without its particle) and agreement.

    People and animals take "the" and may be plural (the children → 아이들); things take
    "a"/"an" unless uncountable, and are never plural (Korean would not mark it).
    """
    en, ko = [], []
    adjectives = [a for a in _ADJECTIVES_OF[noun] if a != exclude]
    if adjectives and rng.random() < p_adj:
        adj = rng.choice(adjectives)
        en.append(adj)
        ko.append(ADJECTIVES[adj][0])
    if noun in THINGS:
        en.append(noun)
        if noun not in MASS_NOUNS:
            en.insert(0, _article(en))
        return en, [*ko, _KOREAN[noun]], "3sg"
    if rng.random() < p_plural:
        return ["the", *en, plural(noun)], [*ko, _KOREAN[noun] + "들"], "pl"
    return ["the", *en, noun], [*ko, _KOREAN[noun]], "3sg"


def _attach(words: list[str], role: str) -> list[str]:
    """A Korean noun phrase with the particle of ``role`` on its noun (recipient: 에게)."""
    noun = words[-1] + "에게" if role == "recipient" else particle(words[-1], role)
    return [*words[:-1], noun]


@dataclass
class _Subject:
    en: list[str]
    ko: list[str]  # in a main clause: 나는, 고양이가
    ko_in_because: list[str]  # in a "because" clause: 내가, 고양이가
    agreement: str  # "1sg", "2", "3sg" or "pl": which English verb form it takes
    word: str  # the pronoun or noun, so that an object can differ from it


def _subject(
    rng: random.Random, role: _Role, p_adj: float, exclude: str = "", topic: bool = False
) -> _Subject:
    """A random subject; ``topic``: a noun takes 은/는 in a main clause, not 이/가."""
    if role.pronouns and rng.random() < 0.3:
        pronoun = rng.choice(_PRONOUNS)
        _, ko, agreement = PRONOUNS[pronoun]
        return _Subject(
            [pronoun], [particle(ko, "topic")], [PRONOUN_SUBJECT[ko]], agreement, pronoun
        )
    noun = rng.choice(role.nouns)
    en, ko, agreement = _noun_phrase(rng, noun, p_adj, 0.2, exclude)
    main = _attach(ko, "topic" if topic else "subject")
    return _Subject(en, main, _attach(ko, "subject"), agreement, noun)


def _object(
    rng: random.Random, role: _Role, subject: str, p_adj: float, ko_role: str
) -> tuple[list[str], list[str]]:
    """English and Korean words of an object (을/를) or a recipient (에게).

    Never the subject itself: no "the cat sees the cat", "i help me" or "we help me".
    """
    if role.pronouns and rng.random() < 0.2:
        choices = [o for o in _OBJECT_PRONOUNS if _PRONOUN_OF_OBJECT[o] != subject]
        if subject in ("i", "we"):
            choices = [o for o in choices if o not in ("me", "us")]
        pronoun = rng.choice(choices)
        return [pronoun], _attach([PRONOUNS[_PRONOUN_OF_OBJECT[pronoun]][1]], ko_role)
    noun = rng.choice([n for n in role.nouns if n != subject])
    en, ko, _ = _noun_phrase(rng, noun, p_adj, 0.2)
    return en, _attach(ko, ko_role)


def _english_verb(forms: Sequence[str], tense: str, negated: bool, agreement: str) -> list[str]:
    """English verb words: eats, do not eat, ate, did not eat, will eat, will not eat."""
    base, third, past = forms
    if tense == "future":
        return ["will", "not", base] if negated else ["will", base]
    if tense == "past":
        return ["did", "not", base] if negated else [past]
    if negated:
        return ["does" if agreement == "3sg" else "do", "not", base]
    return [third if agreement == "3sg" else base]


def _english_be(tense: str, negated: bool, agreement: str) -> list[str]:
    """English "to be": am, is not, were, will not be, ..."""
    if tense == "future":
        return ["will", "not", "be"] if negated else ["will", "be"]
    if tense == "past":
        be = "was" if agreement in ("1sg", "3sg") else "were"
    else:
        be = {"1sg": "am", "3sg": "is"}.get(agreement, "are")
    return [be, "not"] if negated else [be]


def _verb_tense(
    rng: random.Random, tenses: Sequence[str], forms: Sequence[str], negated: bool, agreement: str
) -> str:
    tense = rng.choice(tenses)
    past, present = (_english_verb(forms, t, negated, agreement) for t in ("past", "present"))
    if tense == "past" and "present" in tenses and past == present:
        # "i read a book" is present and past at once: keep one reading, so that every
        # English sentence has exactly one Korean translation.
        return "present"
    return tense


def _clause(rng: random.Random, scale: float) -> _Clause:
    """A random clause of one of five shapes; ``scale`` thins out the optional parts.

    English:  SUBJECT VERB [RECIPIENT] [OBJECT] [PLACE] [TIME]
    Korean:   [TIME] SUBJECT [PLACE] [RECIPIENT] [OBJECT] VERB
    """
    p_adj = 0.25 * scale
    negated = rng.random() < 0.2
    shape = rng.random()
    if shape < 0.12:  # copula: "she is not a doctor" -> 그녀는 의사가 아니다
        # A main clause says what its subject is with the topic, 작가는 아이다 ("the writer is
        # a child"); 작가가 아이다 would stress that it is the writer and nobody else.
        subject = _subject(rng, _PERSON, p_adj, topic=True)
        noun = rng.choice([n for n in PEOPLE if n != subject.word])
        en_noun, ko_noun, _ = _noun_phrase(rng, noun, p_adj, 0.0)
        en_noun = en_noun[1:]  # no "the"
        if subject.agreement == "pl":  # "we are students"; Korean says 우리는 학생이다
            en_noun[-1] = plural(noun)
        else:  # "she is a doctor"
            en_noun.insert(0, _article(en_noun))
        # No time or place: "she was a doctor yesterday" is not a sentence worth teaching,
        # and no future: "will be a doctor" is 의사가 될 것이다, another verb.
        tense = rng.choice(("present", "past"))
        predicate = copula(ko_noun[-1])
        en = [*subject.en, *_english_be(tense, negated, subject.agreement), *en_noun]
        adjective = ko_noun[:-1]  # 친절한 의사다: "a kind doctor"
        return _Clause(
            en, [], subject.ko, subject.ko_in_because, adjective, predicate, tense, negated
        )

    time = rng.choice(_TIMES) if rng.random() < 0.35 * scale else None
    tenses = TIMES[time][1] if time else TENSES
    place = rng.choice(_PLACES) if rng.random() < 0.3 * scale else None
    middle: list[str] = []  # Korean recipient and object
    if shape < 0.25:  # adjective predicate: "the dog was hungry" -> 개가 배고팠다
        adj, predicate, role = rng.choice(_PREDICATE_ADJECTIVES)
        subject = _subject(rng, role, p_adj, exclude=adj)
        tense = rng.choice(tenses)
        en_pred = [*_english_be(tense, negated, subject.agreement), adj]
    elif shape < 0.40:  # intransitive: "the bird sings" -> 새가 노래한다
        forms, predicate, role = rng.choice(_INTRANSITIVE)
        subject = _subject(rng, role, p_adj)
        tense = _verb_tense(rng, tenses, forms, negated, subject.agreement)
        en_pred = _english_verb(forms, tense, negated, subject.agreement)
    elif shape < 0.55:  # ditransitive: "the teacher gives the student a book"
        forms, predicate, what = rng.choice(_DITRANSITIVE)
        subject = _subject(rng, _PERSON, p_adj)
        en_to, ko_to = _object(rng, _ANIMATE, subject.word, p_adj, "recipient")
        en_obj, ko_obj = _object(rng, what, subject.word, p_adj, "object")
        tense = _verb_tense(rng, tenses, forms, negated, subject.agreement)
        en_pred = [*_english_verb(forms, tense, negated, subject.agreement), *en_to, *en_obj]
        middle = [*ko_to, *ko_obj]
    else:  # transitive: "the cat ate fish" -> 고양이가 생선을 먹었다
        forms, predicate, who, what = rng.choice(_TRANSITIVE)
        subject = _subject(rng, who, p_adj)
        en_obj, ko_obj = _object(rng, what, subject.word, p_adj, "object")
        tense = _verb_tense(rng, tenses, forms, negated, subject.agreement)
        en_pred = [*_english_verb(forms, tense, negated, subject.agreement), *en_obj]
        middle = ko_obj
    en = [*subject.en, *en_pred]
    ko_time: list[str] = []
    if place:
        en += place.split()
        middle = [PLACES[place], *middle]
    if time:
        en += time.split()
        ko_time = TIMES[time][0].split()
    return _Clause(
        en, ko_time, subject.ko, subject.ko_in_because, middle, predicate, tense, negated
    )


def _korean(
    clauses: list[_Clause], conjunctions: list[str], i: int, ending: str, in_because: bool
) -> list[str]:
    """Korean words of ``clauses[i:]``, whose last predicate takes ``ending``.

    English clauses branch to the right ("A because B and C" is A because (B and C)); Korean
    keeps the order for "and" (A-고 B) and "but" (A-지만 B) but puts a "because" clause first
    (B-기 때문에 A), so whole clauses swap places.
    """
    if i == len(clauses) - 1:
        return clauses[i].korean(ending, in_because)
    conjunction = conjunctions[i]
    rest = clauses, conjunctions, i + 1
    if conjunction == "because":
        return [*_korean(*rest, "because", True), *clauses[i].korean(ending, in_because)]
    return [*clauses[i].korean(conjunction, in_because), *_korean(*rest, ending, in_because)]


def sentence(rng: random.Random) -> tuple[str, str]:
    """One (English, Korean) sentence pair: one to three clauses, at most ``MAX_WORDS`` words
    on each side; the same pair for the same random state.

    Args:
        rng: the random state to draw from (advanced by the call).

    Returns:
        English and Korean text, lower-case words separated by single spaces:
        ("i did not eat an apple yesterday", "어제 나는 사과를 먹지 않았다").
    """
    while True:
        draw = rng.random()
        n = 1 if draw < 0.25 else 2 if draw < 0.65 else 3  # clauses: 25%, 40%, 35%
        scale = (1.0, 0.85, 0.7)[n - 1]  # fewer optional words in a longer sentence
        clauses = [_clause(rng, scale) for _ in range(n)]
        conjunctions: list[str] = []
        for _ in range(n - 1):  # "and ... and" reads well; "but ... but", "because ... because" not
            conjunctions.append(
                rng.choice([c for c in CONJUNCTIONS if c == "and" or c not in conjunctions])
            )
        en = list(clauses[0].en)
        for conjunction, clause in zip(conjunctions, clauses[1:], strict=True):
            en += [conjunction, *clause.en]
        ko = _korean(clauses, conjunctions, 0, "final", False)
        if len(en) <= MAX_WORDS and len(ko) <= MAX_WORDS:
            return " ".join(en), " ".join(ko)


# ------------------------------------------------------------------------------ vocabularies


def _predicates() -> Iterable[Predicate]:
    """Every predicate the grammar can use."""
    for _, korean in VERB_FORMS.values():
        yield Predicate.of(korean)
    for _, korean, _ in INTRANSITIVE.values():
        yield Predicate.of(korean)
    for _, _, forms in ADJECTIVES.values():
        if forms is not None:
            yield Predicate.of(forms, adjective=True)
    for noun in PEOPLE.values():
        yield copula(noun)


def grammar_vocabs() -> tuple[Vocab, Vocab]:
    """English and Korean vocabularies of every word the grammar can produce, sorted.

    Built from the lexicon, not from samples, so that no generated sentence meets UNK.
    """
    animate = {**PEOPLE, **ANIMALS}
    en = {"the", "a", "an", "will", "not", "do", "does", "did", "be", *CONJUNCTIONS}
    en |= {"am", "is", "are", "was", "were"}
    en |= set(PRONOUNS) | {obj for obj, _, _ in PRONOUNS.values()}
    en |= set(animate) | {plural(noun) for noun in animate} | set(THINGS) | set(ADJECTIVES)
    en |= {w for forms, _ in VERB_FORMS.values() for w in forms.split()}
    en |= {w for forms, _, _ in INTRANSITIVE.values() for w in forms.split()}
    en |= {w for phrase in (*PLACES, *TIMES) for w in phrase.split()}

    ko = {particle(p, "topic") for _, p, _ in PRONOUNS.values()} | set(PRONOUN_SUBJECT.values())
    nouns = [*animate.values(), *(noun + "들" for noun in animate.values())]
    pronouns = [p for _, p, _ in PRONOUNS.values()]
    ko |= {particle(n, role) for n in nouns for role in ("subject", "object")}
    ko |= {particle(n, "topic") for n in (*PEOPLE.values(), *(n + "들" for n in PEOPLE.values()))}
    ko |= {n + "에게" for n in nouns + pronouns} | {particle(p, "object") for p in pronouns}
    ko |= {particle(ko_word, "object") for ko_word, _ in THINGS.values()}
    ko |= {attributive for attributive, _, _ in ADJECTIVES.values()}
    for pred in _predicates():
        for tense in TENSES if pred.future is not None else ("present", "past"):
            for ending in ENDINGS:
                for negated in (False, True):
                    ko.update(conjugate(pred, tense, ending, negated))
    ko |= set(PLACES.values()) | {w for ko_time, _ in TIMES.values() for w in ko_time.split()}
    return Vocab(sorted(en)), Vocab(sorted(ko))


# ------------------------------------------------------------------------------ the task

HELD_OUT = {"valid": (0, 20), "test": (20, 40)}  # hash buckets out of 1000: 2% each


def split_of(english: str) -> str:
    """Which split an English sentence belongs to: "valid", "test" or "train".

    A fixed 2% of all sentences is validation and another 2% test, whatever the seed: the
    English words are hashed with BLAKE2b (Python's ``hash()`` of a string changes from one
    process to the next) into 1000 buckets.
    """
    text = " ".join(tokenize_words(english)).encode("utf-8")
    bucket = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") % 1000
    for name, (low, high) in HELD_OUT.items():
        if low <= bucket < high:
            return name
    return "train"


def _check_count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


class GrammarTask:
    """English→Korean translation from the larger grammar, drawn on the fly.

    Training sentences are fresh every epoch, a pure function of ``(seed, epoch, n)``;
    validation and test sentences are fixed by the seed, distinct, and never drawn for
    training (:func:`split_of`). Ids follow :class:`course_lib.data.Task`: sources without
    BOS/EOS, targets wrapped as BOS ... EOS.

    Args:
        seed: fixes every sentence the task draws.
    """

    name = "en-ko-large"
    join_target = " "

    def __init__(self, seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.src_vocab, self.tgt_vocab = grammar_vocabs()
        self.tokenize_source = self.tokenize_target = tokenize_words
        # held-out pairs drawn so far, with the random state that continues them
        self._held_out: dict[str, tuple[random.Random, list[tuple[str, str]], set[str]]] = {}

    def _rng(self, *parts: object) -> random.Random:
        # A string seed goes through SHA-512 inside random.Random: the same in every process.
        return random.Random("/".join(map(str, (self.name, self.seed, *parts))))

    def encode_source(self, text: str) -> list[int]:
        """Source ids (no BOS/EOS: the encoder reads the text only)."""
        return self.src_vocab.encode(tokenize_words(text))

    def encode_target(self, text: str) -> list[int]:
        """Target ids wrapped as BOS ... EOS (what teacher forcing needs)."""
        return self.tgt_vocab.encode(tokenize_words(text), bos=True, eos=True)

    def decode_target(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Korean text of target ids, stopping at the first EOS."""
        return self.join_target.join(self.tgt_vocab.decode(ids))

    def train_pairs(self, epoch: int, n: int) -> list[tuple[str, str]]:
        """``n`` (English, Korean) training pairs for ``epoch`` (repeats are possible).

        The first ``k`` pairs of a call are those of a call with ``n = k``.
        """
        _check_count("epoch", epoch)
        rng, pairs = self._rng("train", epoch), []
        while len(pairs) < _check_count("n", n):
            en, ko = sentence(rng)
            if split_of(en) == "train":
                pairs.append((en, ko))
        return pairs

    def train_examples(self, epoch: int, n: int) -> list[tuple[list[int], list[int]]]:
        """:meth:`train_pairs` as ``(source ids, target ids)``, ready for ``data.make_batches``."""
        return [
            (self.encode_source(s), self.encode_target(t)) for s, t in self.train_pairs(epoch, n)
        ]

    def _held_out_pairs(self, split: str, n: int) -> list[tuple[str, str]]:
        _check_count("n", n)
        rng, pairs, seen = self._held_out.setdefault(split, (self._rng(split), [], set()))
        while len(pairs) < n:  # 1 draw in 50 lands in the split; keep the distinct ones
            en, ko = sentence(rng)
            if en not in seen and split_of(en) == split:
                seen.add(en)
                pairs.append((en, ko))
        return pairs[:n]

    def valid_pairs(self, n: int) -> list[tuple[str, str]]:
        """The first ``n`` distinct validation pairs (English, Korean) of this seed."""
        return self._held_out_pairs("valid", n)

    def test_pairs(self, n: int) -> list[tuple[str, str]]:
        """The first ``n`` distinct test pairs (English, Korean) of this seed."""
        return self._held_out_pairs("test", n)

    def valid_examples(self, n: int) -> list[tuple[list[int], list[int]]]:
        return [(self.encode_source(s), self.encode_target(t)) for s, t in self.valid_pairs(n)]

    def test_examples(self, n: int) -> list[tuple[list[int], list[int]]]:
        return [(self.encode_source(s), self.encode_target(t)) for s, t in self.test_pairs(n)]


# ------------------------------------------------------------------------------ BLEU


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (Papineni et al., 2002) of ``hypotheses`` against one reference each,
    computed by sacrebleu: 0–100.

    BLEU = BP · exp(Σₙ ¼ log pₙ), n = 1…4, pₙ the clipped n-gram precision over the whole
    corpus and BP = min(1, exp(1 − r/c)) the brevity penalty. Tokens are the space-separated
    words (sacrebleu's ``tokenize="none"``): the targets already are words of a closed
    vocabulary, particles attached (고양이가), with no punctuation to split off, so BLEU counts
    exactly the tokens the model predicts. Nothing is downloaded.

    Args:
        hypotheses: the model's sentences.
        references: the correct sentences, in the same order.

    Returns:
        The score: 100 when every sentence matches, 0 when no word does, and (sacrebleu's
        convention) also 0 for a corpus without a single 4-gram, i.e. of sentences under
        four words only (any sizeable sample of this grammar has 4-grams).
    """
    # sacrebleu takes a third of a second to import; only the chapters that score need it
    from sacrebleu.metrics import BLEU

    for name, sentences in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(sentences, str):
            raise ValueError(f"{name} must be a list of sentences, got one string")
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise ValueError(f"{name}[{i}] is a {type(s).__name__}, expected a str")
    if len(hypotheses) == 0:
        raise ValueError("hypotheses is empty: corpus BLEU needs at least one sentence")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses has {len(hypotheses)} sentences but references has {len(references)}"
        )
    bleu = BLEU(tokenize="none")
    return float(bleu.corpus_score(list(hypotheses), [list(references)]).score)
