"""Evaluate the review-sentiment model: ``python -m models.sentiment_eval``.

Negative (1-2 stars) against positive (4-5 stars) reviews; 3-star reviews are left out.
For the lexicon alone, the learner alone and the blend it prints accuracy (a review is
called negative when :func:`models.score.is_negative` says so) and ROC AUC, per
language, on two sets:

- ``sim``: simulator reviews of one seed, after the model has learned the simulator
  reviews of another seed. Both seeds draw from the same fixed phrase lists, so this shows
  that learning works, not that it generalises.
- ``heldout``: the hand-written reviews of ``tests/data/reviews_heldout.jsonl``, scored by
  the same model (lexicon untouched, learner taught on simulator texts only).

Then texts/s for ``score`` and ``learn``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from models.score import is_negative
from models.sentiment import SentimentModel, lexicon_score
from streams.simulation.texts import CATEGORY_NOUNS, review_text

HELDOUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "reviews_heldout.jsonl"
_HAN = re.compile(r"[\u4e00-\u9fff]")


class Review(NamedTuple):
    lang: str
    rating: int
    text: str


def simulator_reviews(seed: int, n: int) -> list[Review]:
    """``n`` simulator reviews with ratings drawn uniformly from 1-5."""
    rng = random.Random(seed)
    categories = sorted(CATEGORY_NOUNS["en"])
    out = []
    for _ in range(n):
        rating = rng.randint(1, 5)
        text = review_text(rng, rating, rng.choice(categories))
        out.append(Review("zh" if _HAN.search(text) else "en", rating, text))
    return out


def heldout_reviews(path: Path = HELDOUT) -> list[Review]:
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return [Review(r["lang"], int(r["rating"]), r["text"]) for r in rows]


def roc_auc(scores: list[float], positive: list[bool]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def accuracy(scores: list[float], positive: list[bool]) -> float:
    return sum(is_negative(s) != p for s, p in zip(scores, positive)) / len(scores)


def scorers(model: SentimentModel) -> dict[str, Callable[[str], float]]:
    return {
        "lexicon": lexicon_score,
        "learner": lambda text: model.learner_score(text)[1],
        "blend": model.score,
    }


def evaluate(
    score: Callable[[str], float], reviews: Iterable[Review]
) -> tuple[int, float, float]:
    """(n, accuracy, ROC AUC) of negative-vs-positive reviews; 3 stars left out."""
    rated = [r for r in reviews if r.rating != 3]
    scores = [score(r.text) for r in rated]
    positive = [r.rating >= 4 for r in rated]
    return len(rated), accuracy(scores, positive), roc_auc(scores, positive)


def trained(reviews: Iterable[Review]) -> SentimentModel:
    model = SentimentModel()
    for r in reviews:
        model.learn(r.text, r.rating)
    return model


def rate(fn: Callable[[], object], count: int) -> float:
    """Calls per second of ``fn`` run ``count`` times."""
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=2)
    parser.add_argument("--train", type=int, default=2000, help="simulator reviews to learn")
    parser.add_argument("--test", type=int, default=1000, help="simulator reviews to score")
    parser.add_argument("--heldout", type=Path, default=HELDOUT)
    args = parser.parse_args(argv)

    train = simulator_reviews(args.train_seed, args.train)
    sets = {"sim": simulator_reviews(args.test_seed, args.test), "heldout": heldout_reviews(args.heldout)}
    model = trained(train)
    print(f"model {model.version}: learned {args.train} simulator reviews (seed {args.train_seed})")
    print(f"{'set':8} {'lang':4} {'n':>5}  " + "  ".join(f"{name + ' acc/auc':>17}" for name in scorers(model)))
    for set_name, reviews in sets.items():
        for lang in ("en", "zh", "all"):
            subset = [r for r in reviews if lang in (r.lang, "all")]
            cells = []
            n = 0
            for score in scorers(model).values():
                n, acc, auc = evaluate(score, subset)
                cells.append(f"{acc:8.3f}/{auc:.3f}")
            print(f"{set_name:8} {lang:4} {n:>5}  " + "  ".join(f"{c:>17}" for c in cells))

    texts = [r.text for r in sets["sim"]] + [r.text for r in sets["heldout"]]
    longest = ("Great value but the strap broke. 质量不错但是物流太慢。" * 200)[:10_000]
    it = iter(range(10**9))
    learner = trained(train)
    print(
        f"score: {rate(lambda: model.score(texts[next(it) % len(texts)]), 3000):,.0f} texts/s "
        f"(reviews of {sum(map(len, texts)) / len(texts):.0f} chars on average); "
        f"{rate(lambda: model.score(longest), 20):,.1f} texts/s at 10,000 chars"
    )
    print(
        f"learn: {rate(lambda: learner.learn(texts[next(it) % len(texts)], 1 + next(it) % 5), 3000):,.0f} texts/s; "
        f"dumps: {len(model.dumps()):,} bytes after {model.labels} labels"
    )


if __name__ == "__main__":
    main()
