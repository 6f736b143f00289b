"""Short review texts in English and Chinese whose tone follows the star rating.

Texts are one or two phrases drawn from per-language, per-polarity lists; some
phrases name the product category (``{cat}``), so texts vary and mention what
was bought. Phrases never mix polarities, so a review's tone is learnable.
"""

from __future__ import annotations

import random

#: Languages we write reviews in, and the share of reviews written in each.
LANGUAGE_SHARES: dict[str, float] = {"en": 0.7, "zh": 0.3}

#: Phrase templates by language and polarity; ``{cat}`` is replaced by a category noun.
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "positive": (
            "Absolutely love it!",
            "Great quality for the price.",
            "Arrived quickly and well packed.",
            "Exactly as described, very happy.",
            "Best {cat} I have bought in a long time.",
            "Would definitely buy again.",
            "Five stars, no complaints at all.",
            "Works perfectly, highly recommend.",
            "Really good value, the whole family likes it.",
            "Super fast delivery and friendly service.",
            "This {cat} exceeded my expectations.",
            "Solid and well made.",
            "Very pleased with this order.",
            "Fantastic, already ordered a second one.",
            "Lovely {cat}, looks even better in person.",
            "Easy ordering and great customer support.",
            "This shop never disappoints.",
            "Top notch, thank you!",
        ),
        "mixed": (
            "It's okay, nothing special.",
            "Decent {cat}, but a bit overpriced.",
            "Does the job, though delivery took a while.",
            "Quality is average for the price.",
            "Some parts are good, some not so much.",
            "Fine overall, packaging could be better.",
            "Not bad, but I expected more.",
            "Three stars: works, but feels cheap.",
            "Average {cat}, probably would not reorder.",
            "Arrived late but works as described.",
            "Mixed feelings about this one.",
            "Good idea, mediocre execution.",
            "Acceptable, though the colour differs from the photo.",
            "It is fine for occasional use.",
            "Neither great nor terrible.",
            "Size runs a little small, otherwise okay.",
        ),
        "negative": (
            "Very disappointed.",
            "Broke after two days.",
            "Terrible quality, do not buy.",
            "Arrived damaged and support never replied.",
            "The {cat} looks nothing like the pictures.",
            "Waste of money.",
            "Delivery was three weeks late.",
            "Wrong item sent and the return was a nightmare.",
            "Cheap material, fell apart immediately.",
            "Customer service was rude and unhelpful.",
            "I want a refund.",
            "Stopped working after the first use.",
            "Worst {cat} I have ever bought.",
            "Not worth the price at all.",
            "Missing parts and no instructions.",
            "Will not order from this shop again.",
            "Package was opened and items were missing.",
        ),
    },
    "zh": {
        "positive": (
            "非常满意，下次还会再买！",
            "质量很好，物超所值。",
            "物流很快，包装也很仔细。",
            "和描述的一模一样，好评！",
            "这个{cat}真的很好用。",
            "做工精细，推荐购买。",
            "客服态度特别好，耐心解答问题。",
            "性价比超高，家人都很喜欢。",
            "第二次购买了，一如既往的好。",
            "颜色很正，实物比图片还漂亮。",
            "用了一周，感觉非常不错。",
            "发货速度快，第二天就到了。",
            "五星好评，值得信赖的店铺。",
            "买给朋友的{cat}，朋友很喜欢。",
            "超出预期，太惊喜了！",
            "品质有保障，会一直回购。",
        ),
        "mixed": (
            "还可以吧，一般般。",
            "东西不错，就是价格有点贵。",
            "质量中规中矩，没有惊喜。",
            "物流有点慢，不过东西还行。",
            "{cat}能用，但是做工一般。",
            "包装有点简陋，产品本身还可以。",
            "和图片有些色差，勉强接受。",
            "尺寸偏小，其他还好。",
            "用起来还行，不算特别好。",
            "有优点也有缺点，三星吧。",
            "说不上好也说不上坏。",
            "价格合适的话可以考虑。",
            "第一次用感觉一般，再观察看看。",
            "客服回复慢，产品还凑合。",
            "功能够用，但是细节需要改进。",
            "这个{cat}马马虎虎，不一定会回购。",
        ),
        "negative": (
            "非常失望，不推荐购买。",
            "质量太差了，用了两天就坏了。",
            "收到的时候包装已经破损。",
            "和描述完全不符，要求退款。",
            "这个{cat}根本不能用。",
            "客服态度很差，问题一直没解决。",
            "物流慢得离谱，等了三个星期。",
            "发错货了，退货还特别麻烦。",
            "做工粗糙，有明显的瑕疵。",
            "完全是浪费钱。",
            "再也不会在这家店买东西了。",
            "少发了配件，也没有说明书。",
            "用了一次就出故障了。",
            "味道很大，质量堪忧。",
            "图片和实物差距太大了。",
            "最差的一次网购体验。",
        ),
    },
}

#: How each category is called inside a sentence.
CATEGORY_NOUNS: dict[str, dict[str, str]] = {
    "en": {
        "electronics": "gadget",
        "books": "book",
        "fashion": "outfit",
        "home": "homeware",
        "beauty": "skincare product",
        "sports": "sports gear",
        "toys": "toy",
        "grocery": "snack box",
        "garden": "garden tool",
        "automotive": "car accessory",
        "music": "album",
        "pets": "pet product",
    },
    "zh": {
        "electronics": "电子产品",
        "books": "书",
        "fashion": "衣服",
        "home": "家居用品",
        "beauty": "护肤品",
        "sports": "运动装备",
        "toys": "玩具",
        "grocery": "零食",
        "garden": "园艺工具",
        "automotive": "汽车用品",
        "music": "专辑",
        "pets": "宠物用品",
    },
}

_SEPARATOR = {"en": " ", "zh": ""}
MAX_TEXT_CHARS = 128


def polarity_for_rating(rating: int) -> str:
    """``positive`` for 4-5 stars, ``mixed`` for 3, ``negative`` for 1-2."""
    if rating >= 4:
        return "positive"
    if rating == 3:
        return "mixed"
    return "negative"


def review_text(rng: random.Random, rating: int, category: str, *, second_phrase: float = 0.4) -> str:
    """A one- or two-phrase review whose language is drawn from :data:`LANGUAGE_SHARES`."""
    language = "en" if rng.random() < LANGUAGE_SHARES["en"] else "zh"
    phrases = PHRASES[language][polarity_for_rating(rating)]
    noun = CATEGORY_NOUNS[language].get(category, "东西" if language == "zh" else "item")
    first = rng.choice(phrases)
    parts = [first.replace("{cat}", noun)]
    if rng.random() < second_phrase:
        second = rng.choice(phrases)
        if second != first:
            parts.append(second.replace("{cat}", noun))
    text = _SEPARATOR[language].join(parts)
    return text if len(text) <= MAX_TEXT_CHARS else parts[0]
