"""Topics of NAMI-1K prompts: a keyword taxonomy of 14 categories (13 named topics + "other").

The paper reports 14 topic categories (its Fig. 12) without a machine-readable list; this
taxonomy is nami's own. A prompt's topic is the one whose keywords it mentions most often
(words lower-cased, a trailing "s"/"es" also tried), ties going to the earlier topic in
`TOPICS`; a prompt that mentions none is "other". A source file may also give topics itself.
"""

from __future__ import annotations

import re

KEYWORDS: dict[str, tuple[str, ...]] = {
    "people": ("person", "people", "man", "men", "woman", "women", "girl", "boy", "child", "children", "kid",
               "baby", "portrait", "face", "lady", "gentleman", "family", "crowd", "student", "worker", "chef",
               "soldier", "king", "queen", "old", "young", "couple", "friend"),
    "animals": ("animal", "cat", "dog", "bird", "horse", "cow", "sheep", "elephant", "bear", "zebra", "giraffe",
                "fish", "lion", "tiger", "fox", "wolf", "rabbit", "owl", "puppy", "kitten", "deer", "monkey",
                "panda", "duck", "butterfly", "insect", "raccoon", "squirrel"),
    "plants": ("plant", "flower", "tree", "rose", "tulip", "garden", "leaf", "leaves", "grass", "cactus",
               "sunflower", "blossom", "bonsai", "moss", "vine"),
    "food": ("food", "pizza", "cake", "sandwich", "banana", "apple", "orange", "broccoli", "carrot", "donut",
             "hot dog", "bread", "coffee", "tea", "wine", "fruit", "dish", "meal", "soup", "burger", "cookie",
             "chocolate", "breakfast", "dinner", "drink", "cup"),
    "vehicles": ("car", "bus", "truck", "train", "airplane", "plane", "boat", "ship", "bicycle", "motorcycle",
                 "bike", "vehicle", "tram", "taxi", "tractor", "helicopter", "jeep", "van"),
    "architecture": ("building", "house", "castle", "tower", "bridge", "church", "temple", "city", "street",
                     "skyscraper", "palace", "cathedral", "village", "town", "architecture", "ruins", "cottage",
                     "facade", "alley"),
    "landscape": ("landscape", "mountain", "sea", "ocean", "beach", "forest", "river", "lake", "sky", "sunset",
                  "sunrise", "desert", "snow", "valley", "waterfall", "field", "island", "cloud", "clouds",
                  "meadow", "canyon", "hill", "coast", "shore", "night"),
    "indoor": ("room", "kitchen", "bedroom", "table", "chair", "couch", "bed", "sofa", "vase", "clock", "bench",
               "book", "lamp", "window", "shelf", "desk", "interior", "bottle", "bowl", "toilet", "sink",
               "refrigerator", "oven", "microwave", "umbrella", "suitcase", "backpack", "scissors"),
    "art": ("painting", "watercolor", "oil", "sketch", "illustration", "drawing", "anime", "cartoon", "style",
            "art", "artwork", "poster", "mosaic", "sculpture", "statue", "impressionist", "pixel", "render",
            "3d", "abstract", "ink", "comic"),
    "fantasy": ("dragon", "robot", "alien", "spaceship", "magic", "magical", "fairy", "wizard", "unicorn",
                "monster", "cyberpunk", "futuristic", "space", "planet", "galaxy", "astronaut", "steampunk",
                "mythical", "elf", "witch", "ghost"),
    "fashion": ("dress", "shirt", "hat", "jacket", "coat", "shoe", "shoes", "tie", "handbag", "fashion",
                "clothing", "suit", "scarf", "glasses", "jewelry", "necklace", "gown", "uniform", "sweater"),
    "sports": ("sport", "sports", "ball", "football", "soccer", "tennis", "baseball", "skateboard", "surfboard",
               "ski", "skis", "snowboard", "frisbee", "kite", "racket", "surfing", "skiing", "running",
               "playing", "game", "athlete", "stadium"),
    "technology": ("computer", "laptop", "phone", "cell phone", "tv", "television", "keyboard", "mouse",
                   "remote", "camera", "screen", "device", "machine", "robotic", "electronic", "circuit"),
}
TOPICS: tuple[str, ...] = (*KEYWORDS, "other")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def _stems(word: str) -> set[str]:
    forms = {word}
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s"):
        forms.add(word[:-1])
    return forms


def topic_of(prompt: str) -> str:
    """The topic whose keywords `prompt` mentions most (ties: earlier topic); "other" for none."""
    text = prompt.lower()
    words = _WORD.findall(text)
    forms = [_stems(w) for w in words]
    best, best_hits = "other", 0
    for topic, keywords in KEYWORDS.items():
        hits = 0
        for keyword in keywords:
            if " " in keyword:
                hits += len(re.findall(rf"\b{re.escape(keyword)}s?\b", text))
            else:
                hits += sum(keyword in f for f in forms)
        if hits > best_hits:
            best, best_hits = topic, hits
    return best
