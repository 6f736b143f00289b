"""Review sentiment: lexicon prior in two languages, learning from ratings, checkpoints."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.score import NEGATIVE_THRESHOLD, is_negative
from models.sentiment import SentimentModel, lexicon_score, tokens
from models.sentiment_eval import (
    evaluate,
    heldout_reviews,
    main,
    roc_auc,
    simulator_reviews,
    trained,
)

# Written for these tests; none comes from the simulator's phrase lists or the held-out file.
POSITIVE = [
    "I love this jacket, it is warm and looks great.",
    "Excellent quality, the kids are delighted.",
    "Wonderful service and a beautiful vase.",
    "这款保温杯非常好用，很满意。",
    "衣服很漂亮，穿着也舒服。",
    "客服很耐心，推荐这家店。",
]
NEGATIVE = [
    "Awful product, the handle snapped and I am angry.",
    "Terrible fit and the colour is ugly.",
    "Disappointing, it is broken and useless.",
    "太差了，用了一次就坏了。",
    "很失望，东西是假货。",
    "质量糟糕，后悔买了。",
]


@pytest.fixture(scope="module")
def sim_model() -> SentimentModel:
    return trained(simulator_reviews(seed=1, n=800))


@pytest.mark.parametrize("text", POSITIVE)
def test_clear_positives_score_above_zero_before_any_learning(text):
    model = SentimentModel()
    assert model.score(text) > 0.2
    assert not is_negative(model.score(text))


@pytest.mark.parametrize("text", NEGATIVE)
def test_clear_negatives_score_below_zero_before_any_learning(text):
    model = SentimentModel()
    assert model.score(text) < -0.2
    assert is_negative(model.score(text))


@pytest.mark.parametrize(
    ("plain", "negated"),
    [("good", "not good"), ("I recommend it", "I do not recommend it"), ("好", "不好"),
     ("满意", "不满意"), ("推荐", "不推荐"), ("好用", "不太好用")],
)
def test_negation_flips_the_sign(plain, negated):
    model = SentimentModel()
    assert model.score(plain) > 0
    assert model.score(negated) < 0


def test_chinese_words_that_contain_a_negator_are_not_negated():
    assert lexicon_score("不错") > 0  # "not wrong": good
    assert lexicon_score("不差") > 0  # negated bad
    assert lexicon_score("好几天才到") == 0.0  # 好几: "quite a few", not "good"


def test_contrast_weights_what_follows_but():
    assert lexicon_score("包装很好，但是质量很差") < 0 < lexicon_score("质量很差，但是包装很好")


def test_empty_and_whitespace_score_zero():
    model = SentimentModel()
    for text in ["", " ", "\n\t  ", "\u3000"]:
        assert model.score(text) == 0.0


def test_tokens_split_words_and_han_runs():
    assert tokens("Not bad! 还不错") == ["not", "bad", "not bad", "还", "不", "错", "还不", "不错"]
    assert tokens("don't 👍") == ["don't", "👍"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_score_never_raises_and_stays_in_range(text):
    model = SentimentModel()
    value = model.score(text)
    assert -1.0 <= value <= 1.0 and not math.isnan(value)


@settings(max_examples=100, deadline=None)
@given(st.text(), st.integers(1, 5))
def test_learned_model_never_raises_either(text, rating):
    model = SentimentModel(half_weight=1)
    model.learn("great value", 5)
    model.learn("awful value", 1)
    model.learn(text, rating)
    assert -1.0 <= model.score(text) <= 1.0


def test_odd_input_long_mixed_scripts_emoji_and_surrogates():
    model = SentimentModel()
    long_text = ("Great value 👍 but 物流太慢。Ünïcödé ça va? 😡\u200b" * 400)[:10_000]
    for text in [long_text, "\ud800", "\x00", "🙂" * 10_000, "好" * 10_000, "a" * 10_000, "!" * 10_000]:
        assert -1.0 <= model.score(text) <= 1.0
    model.learn(long_text, 2)
    assert -1.0 <= model.score(long_text) <= 1.0


def test_ratings_as_weak_labels_three_stars_and_empty_text_teach_nothing():
    model = SentimentModel()
    assert model.version == "sentiment-lex+nb+0"
    model.learn("it is fine", 3)
    model.learn("   ", 5)
    assert model.version == "sentiment-lex+nb+0"
    model.learn("fell apart", 1)
    model.learn("works nicely", 5)
    assert model.version == "sentiment-lex+nb+2"
    with pytest.raises(ValueError):
        model.learn("x", 0)


def test_learner_has_no_say_until_it_has_seen_both_classes():
    model = SentimentModel()
    prior = model.score("the gizmo wobbles")
    for _ in range(50):
        model.learn("the gizmo wobbles", 1)
    assert model.learner_weight() == 0.0
    assert model.score("the gizmo wobbles") == prior
    model.learn("the gizmo hums along", 5)
    assert model.learner_weight() > 0.0
    assert model.score("the gizmo wobbles") < prior


def test_learning_from_ratings_teaches_words_the_lexicon_lacks():
    model = SentimentModel(half_weight=10)
    assert model.score("the zipper jammed") == 0.0
    assert model.score("拉链卡住了") == 0.0
    for _ in range(20):
        model.learn("the zipper jammed", 1)
        model.learn("拉链卡住了", 2)
        model.learn("the zipper glides", 5)
        model.learn("拉链顺滑", 4)
    assert is_negative(model.score("the zipper jammed"))
    assert is_negative(model.score("拉链卡住了"))
    assert model.score("拉链顺滑") > 0


def test_learning_on_one_simulator_seed_improves_accuracy_on_another(sim_model):
    test = simulator_reviews(seed=2, n=400)
    _, before, auc_before = evaluate(SentimentModel().score, test)
    _, after, auc_after = evaluate(sim_model.score, test)
    assert before >= 0.8  # the lexicon alone
    assert after >= before
    assert after >= 0.97
    assert auc_after >= auc_before


def test_heldout_reviews_are_scored_well_by_the_lexicon_and_after_learning(sim_model):
    reviews = heldout_reviews()
    assert len(reviews) >= 60
    assert {r.lang for r in reviews} == {"en", "zh"}
    for lang in ("en", "zh"):
        subset = [r for r in reviews if r.lang == lang]
        assert len(subset) >= 30
        _, acc, auc = evaluate(SentimentModel().score, subset)
        assert acc >= 0.8 and auc >= 0.9, lang
        _, acc, auc = evaluate(sim_model.score, subset)
        assert acc >= 0.8 and auc >= 0.9, lang


def test_heldout_reviews_share_no_phrase_with_the_simulator():
    from streams.simulation.texts import PHRASES

    fragments = {
        fragment.strip(" .,!。，！")
        for by_polarity in PHRASES.values()
        for ps in by_polarity.values()
        for p in ps
        for fragment in p.split("{cat}")
    }
    # Long enough to be a phrase, not a common word ("Average", "质量").
    phrases = {f for f in fragments if len(f) >= (12 if f.isascii() else 5)}
    for review in heldout_reviews():
        assert not [p for p in phrases if p in review.text], review.text


def test_dumps_loads_round_trip_gives_identical_scores_and_learning(sim_model):
    texts = [r.text for r in simulator_reviews(seed=3, n=200)] + POSITIVE + NEGATIVE
    copy = SentimentModel.loads(sim_model.dumps())
    assert copy.version == sim_model.version
    assert [copy.score(t) for t in texts] == [sim_model.score(t) for t in texts]
    fresh = SentimentModel.loads(SentimentModel().dumps())
    assert fresh.version == "sentiment-lex+nb+0"
    assert fresh.score("不好") == SentimentModel().score("不好")


def test_loads_rejects_an_unknown_format():
    import pickle

    with pytest.raises(ValueError):
        SentimentModel.loads(pickle.dumps({"format": 99}))


def test_same_learning_sequence_gives_same_model():
    reviews = simulator_reviews(seed=4, n=300)
    a, b = trained(reviews), trained(reviews)
    assert a.dumps() == b.dumps()
    texts = [r.text for r in simulator_reviews(seed=5, n=100)]
    assert [a.score(t) for t in texts] == [b.score(t) for t in texts]


def test_version_changes_as_it_learns():
    model = SentimentModel()
    seen = {model.version}
    for i, r in enumerate(simulator_reviews(seed=6, n=30)):
        model.learn(r.text, r.rating)
        seen.add(model.version)
    assert len(seen) == 1 + model.labels
    assert model.labels > 0


def test_threshold_constant_matches_is_negative():
    assert is_negative(NEGATIVE_THRESHOLD)
    assert not is_negative(NEGATIVE_THRESHOLD + 1e-9)
    assert not is_negative(0.0)


def test_roc_auc_counts_ties_half():
    assert roc_auc([0.9, 0.1], [True, False]) == 1.0
    assert roc_auc([0.1, 0.9], [True, False]) == 0.0
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(roc_auc([0.5], [True]))


def test_eval_command_prints_the_table(capsys):
    main(["--train", "200", "--test", "100"])
    out = capsys.readouterr().out
    assert "lexicon acc/auc" in out and "blend acc/auc" in out
    for row in ("sim      en", "sim      zh", "heldout  en", "heldout  zh", "heldout  all"):
        assert row in out
    assert "texts/s" in out
