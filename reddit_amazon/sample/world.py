"""A small, deterministic, realistic world for the bundled sample.

Real Reddit text and Amazon images cannot ship with the package (terms, size), so the sample is
generated: product catalogs per domain in the Amazon Reviews 2023 metadata format (with child
ASINs, out-of-domain distractors and small drawn images), and Reddit threads in pushshift dump
format where seekers describe what they want to look like and other users link products -- in the
URL forms real comments use, with deleted parents, non-recommendations and dead links mixed in.

The world also knows its ground truth (:meth:`World.expected_records`): which comments a correct
build must keep and with which items. Tests compare the build's output against it.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, field
from typing import Any

from reddit_amazon.schema import DOMAINS

# Amazon Reviews 2023 main_category display names of the three domains (and distractors).
MAIN_CATEGORY = {"beauty": "All Beauty", "fashion": "AMAZON FASHION", "home": "Amazon Home"}
DISTRACTOR_CATEGORIES = ["Books", "All Electronics", "Toys & Games"]

COLORS = {
    "black": (25, 25, 25), "white": (240, 240, 236), "ivory": (236, 228, 205), "navy": (28, 40, 92),
    "sage green": (150, 170, 140), "terracotta": (190, 100, 70), "blush pink": (232, 180, 184),
    "mustard yellow": (214, 170, 40), "burgundy": (110, 20, 40), "charcoal grey": (70, 72, 76),
    "camel": (190, 145, 95), "emerald": (20, 120, 80), "lavender": (180, 160, 210), "rust orange": (180, 80, 30),
}

PRODUCTS: dict[str, list[dict[str, Any]]] = {
    "beauty": [
        {"noun": "Matte Liquid Lipstick", "shape": "tube", "materials": ["long-wear formula"], "stores": ["Lumiere", "Velvetine"]},
        {"noun": "Eyeshadow Palette", "shape": "box", "materials": ["shimmer and matte shades"], "stores": ["Palette Theory", "Glow Lab"]},
        {"noun": "Nail Polish Set", "shape": "bottle", "materials": ["chip-resistant lacquer"], "stores": ["Polished Co", "Lacquerie"]},
        {"noun": "Hair Claw Clip", "shape": "clip", "materials": ["acetate"], "stores": ["Tressa", "Mane Studio"]},
        {"noun": "Blush Compact", "shape": "round", "materials": ["buildable powder"], "stores": ["Glow Lab", "Lumiere"]},
        {"noun": "Makeup Brush Set", "shape": "tube", "materials": ["vegan synthetic bristles"], "stores": ["Brushworks", "Velvetine"]},
        {"noun": "Silk Scrunchies", "shape": "round", "materials": ["mulberry silk"], "stores": ["Tressa", "Silken"]},
        {"noun": "Lip Gloss", "shape": "bottle", "materials": ["non-sticky shine"], "stores": ["Glossier Days", "Lumiere"]},
    ],
    "fashion": [
        {"noun": "Linen Button-Down Shirt", "shape": "shirt", "materials": ["breathable linen"], "stores": ["Northbound", "Harbor & Pine"]},
        {"noun": "Chelsea Boots", "shape": "boot", "materials": ["suede", "leather"], "stores": ["Cobbler Lane", "Stride"]},
        {"noun": "Wide Leg Trousers", "shape": "pants", "materials": ["high-waisted crepe"], "stores": ["Atelier Nine", "Northbound"]},
        {"noun": "Crossbody Bag", "shape": "bag", "materials": ["vegan leather", "canvas"], "stores": ["Carryall", "Satchel & Co"]},
        {"noun": "Chunky Knit Cardigan", "shape": "shirt", "materials": ["oversized cable knit"], "stores": ["Harbor & Pine", "Woolen Mill"]},
        {"noun": "Wrap Midi Dress", "shape": "dress", "materials": ["flowy chiffon", "jersey"], "stores": ["Atelier Nine", "Sundown"]},
        {"noun": "Minimalist Watch", "shape": "round", "materials": ["mesh strap", "leather strap"], "stores": ["Tempo", "Horology"]},
        {"noun": "Canvas Sneakers", "shape": "boot", "materials": ["low-top canvas"], "stores": ["Stride", "Kicks Co"]},
    ],
    "home": [
        {"noun": "Throw Pillow Covers", "shape": "box", "materials": ["boucle", "velvet"], "stores": ["Nestled", "Loom & Linen"]},
        {"noun": "Ceramic Table Lamp", "shape": "lamp", "materials": ["glazed ceramic base"], "stores": ["Lumen House", "Kiln"]},
        {"noun": "Area Rug", "shape": "box", "materials": ["washable low-pile", "jute"], "stores": ["Loom & Linen", "Floorwise"]},
        {"noun": "Blackout Curtains", "shape": "tall", "materials": ["thermal insulated"], "stores": ["Drape Co", "Nestled"]},
        {"noun": "Duvet Cover Set", "shape": "box", "materials": ["stonewashed linen", "cotton percale"], "stores": ["Loom & Linen", "Sleepwell"]},
        {"noun": "Floating Wall Shelves", "shape": "tall", "materials": ["solid wood"], "stores": ["Timberline", "Kiln"]},
        {"noun": "Ceramic Planter", "shape": "round", "materials": ["matte glaze with drainage hole"], "stores": ["Kiln", "Greenhaus"]},
        {"noun": "Bath Towel Set", "shape": "box", "materials": ["plush cotton"], "stores": ["Sleepwell", "Nestled"]},
    ],
}

SUBREDDITS = {
    "beauty": ["MakeupAddiction", "beauty", "Nails", "curlyhair", "SkincareAddiction"],
    "fashion": ["femalefashionadvice", "malefashionadvice", "frugalmalefashion", "BuyItForLife", "weddingplanning"],
    "home": ["HomeDecorating", "InteriorDesign", "malelivingspace", "BuyItForLife", "CozyPlaces"],
}

REQUESTS = {
    "beauty": [
        ("Looking for a {color} {noun_l} that actually lasts", "I want something {color} and {vibe} for everyday wear. My skin is pretty sensitive. Any favourites?"),
        ("Need help finding a {noun_l} in {color}", "I've been searching forever for a {color} {noun_l} that looks {vibe}. Budget is around $20."),
        ("{color} {noun_l} recommendations?", ""),
    ],
    "fashion": [
        ("What {noun_l} should I get for a {vibe} look?", "I'm going for something {color}, {vibe} and comfortable enough to wear all day. Open to suggestions!"),
        ("Help me find a {color} {noun_l}", "Wedding guest outfit, the dress code says cocktail. I love {color} and want it to look {vibe}."),
        ("[Request] {color} {noun_l} under $60", ""),
    ],
    "home": [
        ("Need a {color} {noun_l} for my living room", "My living room is {vibe} with lots of wood and plants. I think a {color} {noun_l} would tie it together. Ideas?"),
        ("Where do you find {vibe} {noun_l}?", "Just moved into my first apartment. Everything is white and boring, want some {color} accents."),
        ("Rate my bedroom - what {noun_l} would work here?", "Going for a {vibe} feel, thinking {color}. Photos in comments."),
    ],
}
# How seekers actually ask: vaguer than catalog titles (so retrieval is not trivially exact).
ASKS = {
    "Matte Liquid Lipstick": ["lipstick", "lip colour", "long lasting lip product"],
    "Eyeshadow Palette": ["eyeshadow", "palette for everyday eyes", "eye makeup"],
    "Nail Polish Set": ["nail polish", "nail colour", "mani shade"],
    "Hair Claw Clip": ["hair clip", "claw clip", "something to hold up thick hair"],
    "Blush Compact": ["blush", "cheek colour", "something for a flush"],
    "Makeup Brush Set": ["brushes", "makeup brushes", "brush set"],
    "Silk Scrunchies": ["scrunchies", "hair ties that don't snag", "hair accessories"],
    "Lip Gloss": ["gloss", "lip shine", "something glossy for lips"],
    "Linen Button-Down Shirt": ["summer shirt", "button up", "breezy top"],
    "Chelsea Boots": ["boots", "ankle boots", "autumn shoes"],
    "Wide Leg Trousers": ["trousers", "work pants", "flowy pants"],
    "Crossbody Bag": ["bag", "everyday purse", "small bag for my phone and keys"],
    "Chunky Knit Cardigan": ["cardigan", "sweater", "something warm to layer"],
    "Wrap Midi Dress": ["dress", "wedding guest dress", "midi dress"],
    "Minimalist Watch": ["watch", "simple watch", "everyday accessory"],
    "Canvas Sneakers": ["sneakers", "casual shoes", "trainers"],
    "Throw Pillow Covers": ["pillows", "cushion covers", "something for the couch"],
    "Ceramic Table Lamp": ["lamp", "bedside lighting", "table light"],
    "Area Rug": ["rug", "something for the floor", "carpet"],
    "Blackout Curtains": ["curtains", "window treatment", "drapes that block light"],
    "Duvet Cover Set": ["bedding", "duvet cover", "sheets and covers"],
    "Floating Wall Shelves": ["shelves", "wall storage", "somewhere to put plants and books"],
    "Ceramic Planter": ["planter", "pot for my monstera", "plant pots"],
    "Bath Towel Set": ["towels", "bathroom textiles", "bath linen"],
}
COLOR_WORDS = {
    "black": ["black", "dark"], "white": ["white", "bright"], "ivory": ["cream", "off-white"],
    "navy": ["navy", "dark blue"], "sage green": ["sage", "muted green"], "terracotta": ["terracotta", "earthy"],
    "blush pink": ["soft pink", "blush"], "mustard yellow": ["mustard", "warm yellow"],
    "burgundy": ["wine coloured", "burgundy"], "charcoal grey": ["grey", "charcoal"], "camel": ["tan", "camel"],
    "emerald": ["green", "jewel toned"], "lavender": ["lilac", "light purple"], "rust orange": ["rust", "burnt orange"],
}
VIBES = ["minimalist", "cozy", "boho", "modern", "vintage", "elegant", "playful", "understated"]

FOLLOW_UPS = [
    "Do you have a budget in mind? And do you prefer something more {vibe} or bold?",
    "What colour is the rest of your stuff? That matters a lot for {color}.",
    "Following, I'm looking for the same thing!",
    "Have you tried thrift stores first?",
]
SEEKER_REPLIES = [
    "Budget is flexible, I mostly care that it looks {vibe} and comes in {color}.",
    "Mostly neutrals, so I think {color} would pop.",
    "Yes, no luck so far unfortunately.",
]
RECOMMENDATIONS = [
    "I have [this one]({url}) in {color} and get compliments every time. It looks way more expensive than it is.",
    "Check out {url} - the {color} is gorgeous in person and it's very {vibe}.",
    "Try this: {url}\n\nI bought it last year and it still looks new.",
    "I got mine from Amazon: [{title_short}]({url}). Super {vibe} and the colour is true to the photos.",
    "{url}\n\nThis is exactly what you're describing!",
]
NON_RECOMMENDATIONS = [
    "lol I bought {url} once and returned it the same day, it looked nothing like the pictures",
    "Not the same thing but here's what happened when my cat saw {url}",
]


def asin_for(*parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest().upper()
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    value = int(digest, 16)
    chars = []
    for _ in range(8):
        value, rest = divmod(value, len(alphabet))
        chars.append(alphabet[rest])
    return "B0" + "".join(chars)


def _reddit_id(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(7))


@dataclass
class SampleItem:
    parent_asin: str
    child_asins: list[str]
    domain: str  # "" for out-of-domain distractors
    metadata: dict[str, Any]  # one Amazon Reviews 2023 metadata line
    image_jpeg: bytes
    image_description: str
    color: str
    noun: str


@dataclass
class ExpectedRecord:
    """What a correct build keeps for one recommending comment."""

    comment_id: str
    thread_id: str
    domain: str
    gt_items: list[str]  # parent ASINs
    context_items: list[str]  # parent ASINs linked earlier in the chain (in domain catalog or not)
    num_context_turns: int


@dataclass
class World:
    items: list[SampleItem]
    submissions: list[dict[str, Any]]
    comments: list[dict[str, Any]]
    reviews: list[dict[str, Any]]  # Amazon Reviews 2023 review rows (asin + parent_asin)
    relevance: dict[str, str]  # comment id -> "yes" | "no" | "uncertain" (pre-recorded LLM answers)
    expected: list[ExpectedRecord] = field(default_factory=list)

    def expected_records(self) -> list[ExpectedRecord]:
        return list(self.expected)


# --------------------------------------------------------------------------------------------


def _draw_image(color: tuple[int, int, int], shape: str, seed: int) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (96, 96), (250, 250, 248))
    draw = ImageDraw.Draw(image)
    accent = tuple(max(0, c - 50) for c in color)
    if shape == "round":
        draw.ellipse((16, 16, 80, 80), fill=color, outline=accent, width=3)
    elif shape in ("tube", "bottle", "lamp", "tall"):
        draw.rectangle((36, 14, 60, 84), fill=color, outline=accent, width=2)
        draw.rectangle((40, 6, 56, 16), fill=accent)
    elif shape in ("shirt", "dress"):
        draw.polygon([(30, 14), (66, 14), (82, 34), (70, 40), (70, 86), (26, 86), (26, 40), (14, 34)], fill=color)
    elif shape == "pants":
        draw.polygon([(28, 10), (68, 10), (74, 88), (54, 88), (48, 40), (42, 88), (22, 88)], fill=color)
    elif shape == "boot":
        draw.polygon([(20, 20), (44, 20), (46, 60), (80, 66), (80, 82), (20, 82)], fill=color, outline=accent)
    elif shape == "bag":
        draw.rectangle((18, 36, 78, 80), fill=color, outline=accent, width=2)
        draw.arc((30, 12, 66, 52), 180, 360, fill=accent, width=3)
    elif shape == "clip":
        draw.arc((18, 24, 78, 72), 0, 360, fill=color, width=10)
    else:
        draw.rectangle((14, 22, 82, 74), fill=color, outline=accent, width=2)
    for _ in range(3):  # a little texture so images differ beyond colour
        x, y = rng.randrange(20, 76), rng.randrange(20, 76)
        draw.point((x, y), fill=accent)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _make_item(rng: random.Random, domain: str, main_category: str, product: dict[str, Any], color: str,
               index: int) -> SampleItem:
    store = rng.choice(product["stores"])
    material = rng.choice(product["materials"])
    vibe = rng.choice(VIBES)
    parent = asin_for(domain, product["noun"], color, index)
    children = [asin_for("child", parent, k) for k in range(rng.choice([1, 2]))]
    title = f"{store} {product['noun']}, {color.title()}, {material.capitalize()} - {vibe.capitalize()} Style"
    image_id = asin_for("img", parent)[2:] + "L"
    description = (
        f"The image shows a {color} {product['noun'].lower()} with a {vibe} look. "
        f"It appears to be made of {material}, photographed on a plain light background. "
        f"The {color} tone is even across the product and the shape is clean and simple."
    )
    metadata = {
        "main_category": main_category,
        "title": title,
        "average_rating": round(rng.uniform(3.6, 4.9), 1),
        "rating_number": rng.randrange(12, 4000),
        "features": [f"{material.capitalize()}", f"Colour: {color}", f"{vibe.capitalize()} design"],
        "description": [f"A {vibe} {product['noun'].lower()} from {store}.", f"Available in {color}."],
        "price": round(rng.uniform(8, 90), 2),
        "images": [
            {
                "thumb": f"https://m.media-amazon.com/images/I/{image_id}._SS40_.jpg",
                "large": f"https://m.media-amazon.com/images/I/{image_id}.jpg",
                "variant": "MAIN",
                "hi_res": f"https://m.media-amazon.com/images/I/{image_id}._SL1500_.jpg",
            }
        ],
        "videos": [],
        "store": store,
        "categories": [main_category, product["noun"].split()[-1]],
        "details": {"Color": color.title(), "Material": material, "Brand": store},
        "parent_asin": parent,
        "bought_together": None,
    }
    image = _draw_image(COLORS[color], product["shape"], seed=index)
    return SampleItem(parent, children, domain if main_category in MAIN_CATEGORY.values() else "", metadata, image,
                      description, color, product["noun"])


def _link(rng: random.Random, asin: str, title: str) -> str:
    slug = "-".join(title.split(",")[0].split()[:4])
    forms = [
        f"https://www.amazon.com/dp/{asin}",
        f"https://www.amazon.com/{slug}/dp/{asin}/ref=sr_1_3?keywords=x&qid=1610000000",
        f"https://amazon.com/gp/product/{asin}?th=1",
        f"https://www.amazon.co.uk/dp/{asin}/",
        f"https://smile.amazon.com/dp/{asin}?ref\\_=ast\\_sto\\_dp",
        f"https://www.amazon.ca/gp/aw/d/{asin}",
    ]
    return rng.choice(forms)


def make_world(seed: int = 0, threads_per_domain: int = 100) -> World:
    """Generate the sample world. Same seed, same world, byte for byte."""
    rng = random.Random(seed)
    items = _catalog(rng)
    by_domain = {d: [i for i in items if i.domain == d] for d in DOMAINS}
    distractors = [i for i in items if not i.domain]
    users = [f"user_{rng.randrange(10**6):06d}" for _ in range(120)]
    submissions: list[dict[str, Any]] = []
    comments: list[dict[str, Any]] = []
    relevance: dict[str, str] = {}
    expected: list[ExpectedRecord] = []
    for domain in DOMAINS:
        for _ in range(threads_per_domain):
            thread = _thread(rng, domain, by_domain[domain], distractors, users)
            submissions.append(thread.submission)
            comments.extend(thread.comments)
            relevance[thread.recommendation_id] = thread.relevance
            if thread.expected is not None:
                expected.append(thread.expected)
    reviews = _reviews(items)
    rng.shuffle(comments)  # dumps are ordered by time, not by thread
    comments.sort(key=lambda c: int(c["created_utc"]))
    submissions.sort(key=lambda s: int(s["created_utc"]))
    return World(items, submissions, comments, reviews, relevance, expected)


def _catalog(rng: random.Random) -> list[SampleItem]:
    """Six colours of every domain's products, then three gift sets of each distractor category."""
    items: list[SampleItem] = []
    index = 0
    for domain in DOMAINS:
        for product in PRODUCTS[domain]:
            for color in rng.sample(sorted(COLORS), 6):
                items.append(_make_item(rng, domain, MAIN_CATEGORY[domain], product, color, index))
                index += 1
    for category in DISTRACTOR_CATEGORIES:
        for k in range(3):
            product = {"noun": f"{category.split()[-1]} Gift Set {k + 1}", "shape": "box",
                       "materials": ["assorted"], "stores": ["Generic"]}
            items.append(_make_item(rng, "", category, product, rng.choice(sorted(COLORS)), index))
            index += 1
    return items


@dataclass
class _Thread:
    """One generated thread: its submission, its comments (the chain, the recommendation, a noise comment), the
    recorded relevance answer for the recommendation and the record a correct build keeps of it (if any)."""

    submission: dict[str, Any]
    comments: list[dict[str, Any]]
    recommendation_id: str
    relevance: str  # "yes" | "no" | "uncertain"
    expected: ExpectedRecord | None


_BASE_TIME = 1_640_000_000  # 2021-12-20


def _thread(rng: random.Random, domain: str, domain_items: list[SampleItem], distractors: list[SampleItem],
            users: list[str]) -> _Thread:
    target = rng.choice(domain_items)
    vibe = rng.choice(VIBES)
    color_word = rng.choice(COLOR_WORDS[target.color]) if rng.random() < 0.6 else rng.choice(["neutral", "fun", "classic"])
    fmt = {"color": color_word, "noun_l": rng.choice(ASKS[target.noun]), "vibe": vibe}
    title_tpl, body_tpl = rng.choice(REQUESTS[domain])
    sub_id = _reddit_id(rng)
    created = _BASE_TIME + rng.randrange(0, 3 * 365 * 86400)
    seeker = rng.choice(users)
    subreddit = rng.choice(SUBREDDITS[domain])
    selftext = body_tpl.format(**fmt)
    if rng.random() < 0.05:
        selftext = "[removed]"
    submission = {
        "id": sub_id, "name": f"t3_{sub_id}", "author": seeker, "subreddit": subreddit,
        "title": title_tpl.format(**fmt)[0].upper() + title_tpl.format(**fmt)[1:],
        "selftext": selftext, "is_self": True, "created_utc": created if rng.random() < 0.7 else str(created),
        "score": rng.randrange(1, 400), "num_comments": 0, "url": f"https://www.reddit.com/r/{subreddit}/comments/{sub_id}/",
        "domain": f"self.{subreddit}", "permalink": f"/r/{subreddit}/comments/{sub_id}/",
    }
    chain, context_parents = _context_chain(rng, submission, created, fmt, domain_items, users)
    parent_fullname = chain[-1]["name"] if chain else f"t3_{sub_id}"

    # The recommendation (sometimes two products, sometimes a child ASIN, sometimes a bad link).
    rec_id = _reddit_id(rng)
    recommended = [target] + ([rng.choice(domain_items)] if rng.random() < 0.12 else [])
    linked = [rng.choice(item.child_asins + [item.parent_asin]) for item in recommended]
    urls = [_link(rng, asin, item.metadata["title"]) for asin, item in zip(linked, recommended)]
    roll = rng.random()
    kind = "yes" if roll < 0.8 else ("no" if roll < 0.92 else "uncertain")
    if kind == "yes":
        body = rng.choice(RECOMMENDATIONS).format(url=urls[0], color=color_word, vibe=vibe, title_short=target.noun)
        if len(urls) > 1:
            body += f"\n\nAlso love [this one]({urls[1]})."
    else:
        body = rng.choice(NON_RECOMMENDATIONS).format(url=urls[0])
    if rng.random() < 0.05:  # a link to a product missing from the catalog (dead/unknown)
        body += f"\n\nor {_link(rng, asin_for('unknown', rec_id), 'Unknown Thing')}"
    if rng.random() < 0.04:  # a distractor item from another category
        other = rng.choice(distractors)
        body += f"\n\nUnrelated but {_link(rng, other.parent_asin, other.metadata['title'])}"
    recommendation = {
        "id": rec_id, "name": f"t1_{rec_id}", "author": rng.choice(users), "body": body,
        "link_id": f"t3_{sub_id}", "parent_id": parent_fullname, "subreddit": subreddit,
        "created_utc": created + 600 * (len(chain) + 1), "score": rng.randrange(1, 200),
        "permalink": f"/r/{subreddit}/comments/{sub_id}/_/{rec_id}/",
    }
    expected = None
    if kind == "yes":
        gt = list(dict.fromkeys(item.parent_asin for item in recommended))
        expected = ExpectedRecord(rec_id, sub_id, domain, gt, list(dict.fromkeys(context_parents)), 1 + len(chain))
    # Noise: a sibling comment with no links, and one from an unrelated thread.
    noise_id = _reddit_id(rng)
    noise = {
        "id": noise_id, "name": f"t1_{noise_id}", "author": rng.choice(users),
        "body": "Following! Great question.", "link_id": f"t3_{sub_id}", "parent_id": f"t3_{sub_id}",
        "subreddit": subreddit, "created_utc": created + 30, "score": 1,
    }
    return _Thread(submission, [*chain, recommendation, noise], rec_id, kind, expected)


def _context_chain(rng: random.Random, submission: dict[str, Any], created: int, fmt: dict[str, str],
                   domain_items: list[SampleItem], users: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The comments between the request and the recommendation (helpers and the seeker taking turns, some
    deleted), and the parent ASINs they link."""
    sub_id, subreddit, seeker = submission["id"], submission["subreddit"], submission["author"]
    chain: list[dict[str, Any]] = []
    parent_fullname = f"t3_{sub_id}"
    context_parents: list[str] = []
    for depth in range(rng.choice([0, 0, 1, 2, 2, 3])):
        cid = _reddit_id(rng)
        author = rng.choice(users) if depth % 2 == 0 else seeker
        body = (rng.choice(FOLLOW_UPS) if depth % 2 == 0 else rng.choice(SEEKER_REPLIES)).format(**fmt)
        if depth == 0 and rng.random() < 0.2:  # an earlier comment that already linked something
            earlier = rng.choice(domain_items)
            body += f" Something like {_link(rng, earlier.child_asins[0], earlier.metadata['title'])}?"
            context_parents.append(earlier.parent_asin)
        deleted = rng.random() < 0.08
        comment = {
            "id": cid, "name": f"t1_{cid}", "author": "[deleted]" if deleted else author,
            "body": "[deleted]" if deleted else body, "link_id": f"t3_{sub_id}",
            "parent_id": parent_fullname, "subreddit": subreddit,
            "created_utc": created + 600 * (depth + 1), "score": rng.randrange(-2, 60),
            "permalink": f"/r/{subreddit}/comments/{sub_id}/_/{cid}/",
        }
        if deleted and context_parents and depth == 0:
            context_parents.pop()
        chain.append(comment)
        parent_fullname = f"t1_{cid}"
    return chain, context_parents


def _reviews(items: list[SampleItem]) -> list[dict[str, Any]]:
    """A five-star review row for each item's parent and child ASINs (the catalog stage's parent map reads them)."""
    return [{
        "rating": 5.0, "title": "Love it", "text": f"Exactly like the photos. {item.color} is lovely.",
        "images": [], "asin": asin, "parent_asin": item.parent_asin,
        "user_id": f"A{asin_for('user', asin)[2:]}", "timestamp": 1_600_000_000_000,
        "helpful_vote": 0, "verified_purchase": True,
    } for item in items for asin in [item.parent_asin, *item.child_asins]]
