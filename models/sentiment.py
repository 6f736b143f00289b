"""Review sentiment for English and Chinese: a lexicon prior blended with an online learner.

The lexicon works from the first review: VADER (the ``vaderSentiment`` package, MIT) for
Latin-script text and a small curated Chinese lexicon (``models/lexicons/zh.tsv``) with
negators, boosters and contrast words for Han text. The learner is River's multinomial
naive Bayes over a bag of tokens (lower-cased words and word bigrams; Han character
unigrams and bigrams, since Chinese has no spaces), taught with star ratings as weak
labels: 1-2 stars negative, 4-5 positive, 3 stars ignored (a three-star text is as often
"good but" as "bad but", so it would teach noise).

The learner's say grows with the labels of its rarer class and with how many of the
text's tokens it has seen, so a text in words it never met is scored by the lexicon.

>>> m = SentimentModel()
>>> m.score("Great product, works perfectly.") > 0 > m.score("Terrible, it broke at once.")
True
>>> m.score("质量很好") > 0 > m.score("不好")
True
>>> m.learn("fell apart within a week", 1)
>>> m.version
'sentiment-lex+nb+1'
>>> SentimentModel.loads(m.dumps()).score("fell apart") == m.score("fell apart")
True
"""

from __future__ import annotations

import math
import pickle
import re
from functools import cache
from importlib import resources

from river import feature_extraction, naive_bayes
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from models.signing import restricted_loads

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(
    rf"(?P<han>[{_HAN}]+)"  # a run of Han characters
    rf"|(?P<word>(?:(?![{_HAN}])[^\W_])+(?:'(?:(?![{_HAN}])[^\W_])+)*)"  # a word, maybe don't
    r"|(?P<symbol>[\u2600-\u27bf\U0001f300-\U0001faff])"  # emoji and pictographs
    r"|(?P<stop>[.!?;,，。！？；、…\n])"  # ends a phrase: no word bigram across it
)
_FORMAT = 1


def tokens(text: str) -> list[str]:
    """The learner's tokens: words and word bigrams; Han characters and character bigrams.

    >>> tokens("Not good. 不好用!")
    ['not', 'good', 'not good', '不', '好', '用', '不好', '好用']
    """
    out: list[str] = []
    previous = ""
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "word":
            word = m.group().lower()
            out.append(word)
            if previous:
                out.append(f"{previous} {word}")
            previous = word
            continue
        previous = ""
        if kind == "han":
            run = m.group()
            out.extend(run)
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
        elif kind == "symbol":
            out.append(m.group())
    return out


class SentimentModel:
    """Sentiment of review text in [-1, 1]; learns online from star ratings.

    ``half_weight`` is the number of labels (counted as twice those of the rarer class)
    at which the learner and the lexicon have equal say on a text whose tokens are all known.
    """

    name = "sentiment-lex+nb"

    def __init__(self, half_weight: int = 40, alpha: float = 1.0) -> None:
        self.half_weight = half_weight
        self.bow = feature_extraction.BagOfWords(
            lowercase=False, strip_accents=False, tokenizer=tokens
        )
        self.nb = naive_bayes.MultinomialNB(alpha=alpha)
        self.labels = 0

    @property
    def version(self) -> str:
        """Names the model that made a score: changes with every label learned (and names
        the snapshot it came in, :mod:`models.trainer`)."""
        base = f"{self.name}+{self.labels}"
        return f"{base}@{self.snapshot}" if getattr(self, "snapshot", "") else base

    def score(self, text: str) -> float:
        """Sentiment in [-1, 1]: negative .. positive; 0.0 for empty or neutral text."""
        if not text or text.isspace():
            return 0.0
        prior = lexicon_score(text)
        weight, learned = self.learner_score(text)
        return max(-1.0, min(1.0, (1.0 - weight) * prior + weight * learned))

    def learn(self, text: str, rating: int) -> None:
        """Learn from a review: 1-2 stars negative, 4-5 positive; 3 stars and empty text teach nothing."""
        if not 1 <= rating <= 5:
            raise ValueError(f"rating must be 1-5, not {rating}")
        if rating == 3:
            return
        x = self.bow.transform_one(text)
        if not x:
            return
        self.nb.learn_one(x, rating >= 4)
        self.labels += 1

    def learner_weight(self) -> float:
        """The learner's share of the score for a text whose tokens it has all seen."""
        counts = self.nb.class_counts
        n = 2 * min(counts[True], counts[False])
        return n / (n + self.half_weight)

    def learner_score(self, text: str) -> tuple[float, float]:
        """(weight, score) of the learner alone: score is 2 P(positive) - 1 with equal class
        priors, from the tokens it has seen; weight is its share in :meth:`score`."""
        base = self.learner_weight()
        if base == 0.0:
            return 0.0, 0.0
        x = self.bow.transform_one(text)
        known = {t: f for t, f in x.items() if t in self.nb.feature_counts}
        if not known:
            return 0.0, 0.0
        jll = self.nb.joint_log_likelihood(known)
        log_odds = (jll[True] - math.log(self.nb.p_class(True))) - (
            jll[False] - math.log(self.nb.p_class(False))
        )
        coverage = sum(known.values()) / sum(x.values())
        return base * coverage, math.tanh(log_odds / 2.0)

    def dumps(self) -> bytes:
        """The learned state as bytes, for a checkpoint (a pickle, never put on a topic: a
        snapshot carries the model inside its signed bundle; :meth:`loads` still refuses any
        global a model is not made of)."""
        state = {
            "format": _FORMAT,
            "half_weight": self.half_weight,
            "labels": self.labels,
            "nb": self.nb,
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def loads(cls, data: bytes) -> SentimentModel:
        state = restricted_loads(data)
        if state.get("format") != _FORMAT:
            raise ValueError(f"unknown sentiment checkpoint format {state.get('format')!r}")
        model = cls(half_weight=state["half_weight"])
        model.nb = state["nb"]
        model.labels = state["labels"]
        return model


# --- the lexicon prior -----------------------------------------------------------------


def lexicon_score(text: str) -> float:
    """Lexicon-only sentiment in [-1, 1]: VADER on the Latin part, the zh lexicon on Han runs.

    Each part that carries sentiment is weighted by its length in words (a Han character
    counting as half a word); parts without sentiment do not dilute the others. VADER's
    time grows with the square of a text's length, so long Latin text is scored in
    chunks of whole sentences.

    >>> lexicon_score("not good") < 0 < lexicon_score("good")
    True
    >>> lexicon_score("不满意") < 0 < lexicon_score("不错")
    True
    """
    emojis = _vader().emojis  # VADER spells each out as words: keep them apart to chunk them
    latin = "".join(f" {c} " if c in emojis else c for c in re.sub(rf"[{_HAN}]+", " ", text))
    han_runs = re.findall(rf"[{_HAN}][{_HAN}\s，。！？；、,.!?;…]*", text)
    parts: list[tuple[float, float]] = []
    for chunk in _chunks(latin):
        en = _vader().polarity_scores(chunk)["compound"]
        if en:
            parts.append((en, float(len(chunk.split()))))
    if han_runs:
        han = "".join(han_runs)
        zh = zh_lexicon_score(han)
        if zh:
            parts.append((zh, len(re.findall(rf"[{_HAN}]", han)) / 2.0))
    total = sum(w for _, w in parts)
    return sum(s * w for s, w in parts) / total if total else 0.0


def _chunks(text: str, words: int = 60) -> list[str]:
    """Whole sentences grouped into chunks of about ``words`` words (a longer sentence is cut)."""
    chunks: list[str] = []
    current: list[str] = []
    for sentence in re.split(r"(?<=[.!?\n])\s+", text):
        split = sentence.split()
        while split:
            room = words - len(current)
            if room <= 0 or (current and len(split) > room):
                chunks.append(" ".join(current))
                current = []
                continue
            current.extend(split[:room])
            split = split[room:]
    if current:
        chunks.append(" ".join(current))
    return chunks


def zh_lexicon_score(text: str) -> float:
    """Chinese lexicon score in [-1, 1], VADER-style: boosters, negation, contrast, normalised."""
    lexicon = _zh_lexicon()
    longest = max(len(w) for w in lexicon)
    scores: list[float] = []
    contrast_at = -1
    for clause in re.split(r"[\s，。！？；、,.!?;…]+", text):
        words = _max_match(clause, lexicon, longest)
        for i, word in enumerate(words):
            kind, value = lexicon.get(word, ("", 0.0))
            if kind == "contrast":
                contrast_at = len(scores)
            if kind != "valence":
                continue
            for j in range(max(0, i - 3), i):
                before_kind, before_value = lexicon.get(words[j], ("", 0.0))
                if before_kind == "negator":
                    value *= before_value
                elif before_kind == "booster" and j >= i - 2:
                    value *= before_value
            scores.append(value)
    if contrast_at >= 0:
        scores = [s * (0.5 if k < contrast_at else 1.5) for k, s in enumerate(scores)]
    total = sum(scores)
    return total / math.sqrt(total * total + 15.0)


def _max_match(clause: str, lexicon: dict[str, tuple[str, float]], longest: int) -> list[str]:
    """Forward maximum matching: the longest lexicon word at each place, else one character."""
    words = []
    i = 0
    while i < len(clause):
        for size in range(min(longest, len(clause) - i), 0, -1):
            piece = clause[i : i + size]
            if size == 1 or piece in lexicon:
                words.append(piece)
                i += size
                break
    return words


@cache
def _zh_lexicon() -> dict[str, tuple[str, float]]:
    path = resources.files("models") / "lexicons" / "zh.tsv"
    lexicon = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            word, kind, value = line.split("\t")
            lexicon[word] = (kind, float(value))
    return lexicon


@cache
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()

