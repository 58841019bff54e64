"""The VQA answer normalisation (EvalAI's rules, used by VQAv2 and TextVQA) and the VQA soft accuracy.

The rules, in the order EvalAI applies them to an answer:

1. ``tokenize``: lower-case; drop every ``,`` and ``?``; split off a possessive (``'s`` → `` 's``).
2. ``strip_punctuation``: each mark of :data:`PUNCTUATION` is deleted where it touches a space or where the
   text holds a digit-comma-digit group, and replaced by a space elsewhere; then a period that is not
   followed by a digit is deleted (``"1.99"`` keeps its period, ``"st. louis"`` loses it).
3. ``words_numbers_articles``: per whitespace word, number words up to ten become digits (``none`` → 0),
   the articles ``a``, ``an``, ``the`` are dropped, and contractions written without their apostrophe get it
   back (``dont`` → ``don't``).

A prediction scores ``min(1, matches / 3)`` against each of the nine-answer subsets that leave one of the ten
human answers out, averaged over the ten subsets: 0, 0.3, 0.6, 0.9 and 1 for 0, 1, 2, 3 and ≥ 4 matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

# Apostrophe-less spellings and the contraction EvalAI maps each to (its table, entry for entry; a few
# entries, e.g. "somebody'd" → "somebodyd", go the other way in the original and are kept as they are).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
# EvalAI's pattern reads "(?!<=\d)(\.)(?!\d)": the first group was meant as a look-behind but is a
# look-ahead that never matches at a period, so in effect only "not followed by a digit" counts.
_LONE_PERIOD = re.compile(r"\.(?!\d)")
# EvalAI passes re.UNICODE (= 32) where re.sub takes its count: at most 32 periods go per answer.
_MAX_PERIODS = 32


def tokenize(text: str) -> str:
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def strip_punctuation(text: str) -> str:
    digit_comma_digit = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or digit_comma_digit else " ")
    return _LONE_PERIOD.sub("", out, count=_MAX_PERIODS)


def words_numbers_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    """EvalAI's full processing of one answer (LLaVA applies it to both sides for TextVQA, and to
    predictions before a VQAv2 upload)."""
    text = tokenize(text).replace("\n", " ").replace("\t", " ").strip()
    return words_numbers_articles(strip_punctuation(text))


def soft_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of ``min(1, matches / 3)``; inputs compared as given."""
    if not human_answers:
        raise ValueError("soft accuracy needs at least one human answer")
    total = 0.0
    for left_out in range(len(human_answers)):
        matches = sum(answer == prediction for index, answer in enumerate(human_answers) if index != left_out)
        total += min(1.0, matches / 3)
    return total / len(human_answers)
