#!/usr/bin/env python3
"""Builds the captioned training images of tessera-imageai-tiny from Debian packages.

Sources (installed by scripts/setup; every image keeps its source and license):
  fonts-noto-color-emoji  every fully-qualified emoji of Unicode's emoji-test.txt (unicode-data)
                          drawn with Noto Color Emoji (OFL-1.1), captioned with its CLDR English
                          name and keywords (unicode-cldr-core, Unicode-DFS-2016); the category
                          is the emoji's Unicode group.
  openclipart-svg         the Open Clip Art Library 0.18 (public domain), drawn with rsvg-convert
                          (librsvg2-bin); captions from each file's own title, description and
                          keywords, with useless ones filtered out; the category from the
                          library's folders, else from a clear keyword, else "other".
  tango-icon-theme        the Tango icons (public domain) from their SVGs; captions from the icon
                          names ("folder-open" -> "open folder icon"); the category from the
                          icon's context folder.
English words come from WordNet (wordnet-base) for the "is this English?" checks.

Output folder:
  images/NNNNNN.png   RGB, --size x --size, the subject centred on white with its aspect kept
  captions.jsonl      {"file", "caption", "category", "source", "license", "origin"} per image
  categories.json     {category: images}
  stats.json          per source: considered, kept, filtered (by reason), unused (--limit), the
                      files that would not draw;
                      per license and category; what caption parts were rejected and why

Deterministic for a given --seed: the order of the images, the sample --limit takes of each
source, and which images of an over-used caption are kept.
"""
import argparse
import collections
import concurrent.futures
import io
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

EMOJI_FONT = pathlib.Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = pathlib.Path("/usr/share/unicode/emoji/emoji-test.txt")
CLDR = pathlib.Path("/usr/share/unicode/cldr/common")
OPENCLIPART = pathlib.Path("/usr/share/openclipart/svg")
TANGO = pathlib.Path("/usr/share/icons/Tango/scalable")
WORDNET = pathlib.Path("/usr/share/wordnet")

EMOJI = "fonts-noto-color-emoji"
CLIPART = "openclipart-svg"
ICONS = "tango-icon-theme"
SOURCES = (EMOJI, CLIPART, ICONS)

LICENSES = {
    EMOJI: "OFL-1.1 (Noto Color Emoji); caption: Unicode-DFS-2016 (CLDR annotations, emoji-test.txt)",
    CLIPART: "public-domain (Open Clip Art Library)",
    ICONS: "public-domain (Tango Desktop Project)",
}

# Unicode's emoji groups (emoji-test.txt) are the categories; the desktop icons that fit none of
# them are a category of their own, and clip art that fits nothing clearly is "other".
GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
          "Activities", "Objects", "Symbols", "Flags")
ICON_CATEGORY = "Icons"
OTHER = "other"

SMILEYS, PEOPLE, NATURE, FOOD, TRAVEL, ACTIVITIES, OBJECTS, SYMBOLS, FLAGS = GROUPS

# Open Clip Art's folders, matched from the deepest, to the emoji group that holds such things
# (clocks and weather are "Travel & Places" and musical instruments "Objects" in Unicode's
# grouping). None: the folder says nothing; the keywords decide.
CLIPART_FOLDERS = {
    "animals": NATURE, "plants": NATURE, "food": FOOD,
    "buildings": TRAVEL, "furniture": OBJECTS, "transportation": TRAVEL, "roadsigns": SYMBOLS,
    "geography": TRAVEL, "astronomy": TRAVEL, "science": OBJECTS, "medicine": OBJECTS,
    "people": PEOPLE, "bodypart": PEOPLE, "stickmen": PEOPLE, "smilies": SMILEYS,
    "clothing": OBJECTS, "hats": OBJECTS, "jewelry": OBJECTS, "pantyhose": OBJECTS,
    "recreation": ACTIVITIES, "music": OBJECTS, "religion": SYMBOLS,
    "signs_and_symbols": SYMBOLS, "flags": FLAGS, "clocks": TRAVEL, "weather": TRAVEL,
    "money": OBJECTS, "awards": ACTIVITIES,
    "computer": OBJECTS, "icons": ICON_CATEGORY, "buttons": ICON_CATEGORY, "folders": ICON_CATEGORY,
    "diagrams": None, "office": OBJECTS, "tools": OBJECTS, "toys": ACTIVITIES, "containers": OBJECTS,
    "education": OBJECTS, "electronics": OBJECTS, "shapes": SYMBOLS, "jigsaw": ACTIVITIES,
    "flowchart": None, "decorations": None, "special": None, "unsorted": None,
}
# Trademarks: a public-domain drawing of a logo is still somebody's mark.
CLIPART_EXCLUDED_FOLDERS = {"logos": "logo (a trademark)"}

# A keyword (or title word) that clearly says what the picture is, for clip art whose folders do
# not. Several different groups among an image's words: no clear match, "other".
CATEGORY_WORDS = {
    NATURE: "animal mammal bird fish insect bug butterfly bee spider dog puppy cat kitten horse cow pig sheep "
            "goat bear lion tiger elephant monkey mouse rabbit frog snake turtle dinosaur penguin owl duck "
            "chicken eagle parrot whale dolphin shark deer fox wolf plant flower tree leaf rose tulip "
            "sunflower cactus mushroom grass forest palm",
    FOOD: "food fruit vegetable apple banana orange lemon lime grape cherry strawberry pear peach tomato "
          "carrot potato bread cake cookie pie dessert candy chocolate cheese egg meat sandwich pizza "
          "drink beverage coffee tea wine beer milk juice bottle cup glass muffin",
    TRAVEL: "car bus truck train ship boat airplane plane aircraft bicycle bike vehicle building house home "
            "castle church city town bridge map globe world earth moon sun star cloud weather rain snow "
            "umbrella clock watch mountain beach island road",
    ACTIVITIES: "sport ball football soccer baseball basketball tennis golf game card chess dice toy puzzle "
                "party balloon gift present christmas halloween easter firework trophy medal",
    OBJECTS: "tool hammer wrench screwdriver saw knife scissors key lock phone telephone computer keyboard "
             "printer camera book pencil pen paper envelope letter lamp bulb battery guitar piano violin "
             "drum trumpet instrument hat shirt shoe dress glasses bag box briefcase money coin",
    PEOPLE: "people person man woman boy girl child baby family hand head face",
    SYMBOLS: "arrow sign symbol warning heart cross",
    FLAGS: "flag",
}

# Caption parts that name a collection, a theme or a folder rather than what the picture shows.
GENERIC_KEYWORDS = set("""
hash icon icons theme computer action actions application applications apps menu filesystem filesystems
mimetypes mime-types stock desktop device devices emblems webpage special unsorted miscellany
signs_and_symbols united_nations_member subnational shape shapes geometry clipart clip art svg image
picture drawing illustration cartoon graphic graphics simple work entertainment recreation education
geography transportation transport equipment logo design etiquette gold-theme lemon_theme_icon
""".split()) | {"clip art", "lemon theme icon", "signs and symbols", "united nations member"}
COLLECTION_WORDS = ("collection", "theme", "iconset", "icon set", "icons", "clipart", "cliparts", "clip art",
                    "gallery", "library", "submission", "sibmission", "part of")
PLACEHOLDER_TITLE = re.compile(r"^(untitled|unnamed|new document|document|drawing|image|picture|layer|svg|"
                               r"clipart|clip art|symbol|icon)\s*\d*$", re.I)
META_DESCRIPTION = re.compile(r"^(this|it|here)\b|https?:|www\.|@|\bhash\(|created|converted|inkscape|\bsvg\b|clip ?art|"
                              r"vectori[sz]|coloring|colouring|exploring|version|license|public domain", re.I)
CLIPART_LICENSE_OK = ("", "http://web.resource.org/cc/PublicDomain", "http://creativecommons.org/licenses/publicdomain/")

STOPWORDS = set("""
a an the of and or in on at to for with without from by as into onto over under up down out off
its it this that these those his her their my your our is are be with no not one two three
""".split())
ENGLISH_SHARE = 2 / 3  # of a title's or description's words, for it to count as English
MAX_TITLE_WORDS = 12
MAX_DESCRIPTION_WORDS = 10
MAX_KEYWORDS = 3
MAX_CAPTION_CHARS = 160
SUBJECT_FILL = 0.9  # the subject's longer side spans this share of the image

DC = "{http://purl.org/dc/elements/1.1/}"
CC = "{http://web.resource.org/cc/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


def fail(message: str):
    raise SystemExit(f"make_data.py: {message}")


def say(message: str):
    print(message, file=sys.stderr, flush=True)


def require(path: pathlib.Path, package: str):
    if not path.exists():
        fail(f"{path} is missing: install {package} (scripts/setup does)")


def package_version(package: str):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


# --- English ------------------------------------------------------------------------------------
class English:
    """Is a word English? WordNet's lemmas, its irregular forms, regular inflections, and the
    function words WordNet leaves out."""

    def __init__(self):
        require(WORDNET / "index.noun", "wordnet-base")
        self.words = set(STOPWORDS)
        self.phrases = set()  # multi-word lemmas, "burkina_faso"
        for pos in ("noun", "verb", "adj", "adv"):
            for line in (WORDNET / f"index.{pos}").read_text(encoding="latin-1").splitlines():
                if not line.startswith(" "):
                    lemma = line.split(" ", 1)[0]
                    (self.phrases if "_" in lemma else self.words).add(lemma)
            exceptions = WORDNET / f"{pos}.exc"
            if exceptions.exists():
                for line in exceptions.read_text(encoding="latin-1").splitlines():
                    self.words.add(line.split(" ", 1)[0])

    def word(self, w: str) -> bool:
        w = w.lower()
        if w in self.words:
            return True
        for suffix, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ing", ""), ("ing", "e"), ("ed", ""),
                             ("ed", "e"), ("er", ""), ("est", ""), ("ly", "")):
            if w.endswith(suffix) and len(w) - len(suffix) >= 3 and w[: len(w) - len(suffix)] + repl in self.words:
                return True
        return False

    def phrase(self, words) -> bool:
        """All words English, or together one of WordNet's multi-word names."""
        return all(self.word(w) for w in words) or "_".join(words).lower() in self.phrases

    def share(self, text: str) -> float:
        """The share of the text's words that are English; 0 when it has no words."""
        words = re.findall(r"[^\W\d_]+", text)
        return sum(self.word(w) for w in words) / len(words) if words else 0.0


def words_of(text: str):
    """Lower-case words, plurals folded, for "is this already said?" checks."""
    out = set()
    for w in re.findall(r"[^\W\d_]+", text.lower()):
        if w not in STOPWORDS:
            out.add(w[:-1] if len(w) > 3 and w.endswith("s") else w)
    return out


# --- pictures -----------------------------------------------------------------------------------
def to_square(rgba, size: int):
    """The subject (what is not white once on white) centred on white, aspect kept."""
    from PIL import Image, ImageChops

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    rgb = white.convert("RGB")
    difference = ImageChops.difference(rgb, Image.new("RGB", rgb.size, (255, 255, 255))).convert("L")
    box = difference.point(lambda v: 255 if v > 8 else 0).getbbox()
    if box is None:
        return None
    subject = rgb.crop(box)
    side = max(subject.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(subject, ((side - subject.width) // 2, (side - subject.height) // 2))
    inner = max(1, round(size * SUBJECT_FILL))
    canvas = canvas.resize((inner, inner), Image.LANCZOS)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(canvas, ((size - inner) // 2, (size - inner) // 2))
    return out


def too_blank(image) -> bool:
    """Fewer than 2% of the pixels visibly differ from white in any channel (so that yellow
    counts): a speck, hairlines that vanished when shrunk, or nothing at all."""
    from PIL import ImageChops

    r, g, b = image.split()
    lowest = ImageChops.darker(ImageChops.darker(r, g), b)
    return sum(lowest.histogram()[:235]) < 0.02 * image.width * image.height


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def render_svg(path: pathlib.Path, size: int, timeout: float):
    """(picture, None) or (None, why not)."""
    from PIL import Image

    # Rendered well above the final size, so that cropping to the subject keeps detail.
    pixels = max(512, 8 * size)
    try:
        out = subprocess.run(["rsvg-convert", "-a", "-w", str(pixels), "-h", str(pixels), str(path)],
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"rsvg-convert took over {timeout:g} s"
    if out.returncode != 0 or not out.stdout:
        return None, "rsvg-convert failed"
    try:
        rgba = Image.open(io.BytesIO(out.stdout)).convert("RGBA")
    except Exception:
        return None, "rsvg-convert wrote no readable PNG"
    picture = to_square(rgba, size)
    if picture is None or too_blank(picture):
        return None, "renders blank or nearly blank"
    return picture, None


class EmojiPainter:
    def __init__(self, size: int):
        from PIL import ImageFont

        # Noto Color Emoji holds 136x128 colour bitmaps at 109 px; complex shaping (raqm) joins
        # ZWJ sequences, flags and keycaps into one glyph.
        layout = ImageFont.Layout.RAQM if hasattr(ImageFont, "Layout") else ImageFont.LAYOUT_RAQM
        try:
            self.font = ImageFont.truetype(str(EMOJI_FONT), 109, layout_engine=layout)
        except OSError as e:
            fail(f"Pillow cannot open {EMOJI_FONT} ({e}): it needs FreeType with colour bitmap support")
        self.size = size
        self.advance = self.font.getlength("\U0001F600")
        self.lock = threading.Lock()  # one FreeType face, drawn from several threads

    def paint(self, text: str):
        from PIL import Image, ImageDraw

        canvas = Image.new("RGBA", (256, 192), (255, 255, 255, 0))
        with self.lock:
            if self.font.getlength(text) > 1.3 * self.advance:
                return None, "the font has no single glyph for the sequence"
            ImageDraw.Draw(canvas).text((32, 24), text, font=self.font, embedded_color=True)
        if canvas.getchannel("A").getbbox() is None:
            return None, "the font has no glyph for it"
        picture = to_square(canvas, self.size)
        if picture is None or too_blank(picture):
            return None, "renders blank or nearly blank"
        return picture, None


# --- emoji --------------------------------------------------------------------------------------
def read_cldr_names():
    """emoji without FE0F -> (name, [keywords]), from CLDR's English annotations and the derived
    ones (skin tones, flags, and other sequences)."""
    names, keywords = {}, {}
    for folder in ("annotations", "annotationsDerived"):
        path = CLDR / folder / "en.xml"
        require(path, "unicode-cldr-core")
        for el in ET.parse(path).getroot().iter("annotation"):
            cp = el.get("cp", "").replace("\ufe0f", "")
            text = (el.text or "").strip()
            if not cp or not text:
                continue
            if el.get("type") == "tts":
                names.setdefault(cp, text)
            else:
                keywords.setdefault(cp, [k.strip() for k in text.split("|") if k.strip()])
    return {cp: (name, keywords.get(cp, [])) for cp, name in names.items()}


def emoji_caption(name: str, keywords) -> str:
    said = words_of(name)
    extra = []
    for k in keywords:
        if k.lower() != name.lower() and not words_of(k) <= said and k not in extra:
            extra.append(k)
            said |= words_of(k)
        if len(extra) == MAX_KEYWORDS:
            break
    return ", ".join([name] + extra)


def emoji_candidates(stats):
    require(EMOJI_TEST, "unicode-data")
    require(EMOJI_FONT, "fonts-noto-color-emoji")
    cldr = read_cldr_names()
    group = None
    out = []
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if not line or line.startswith("#"):
            continue
        fields, _, comment = line.partition("#")
        codes, status = (f.strip() for f in fields.split(";"))
        if status not in ("fully-qualified", "component"):
            continue  # other spellings of an emoji listed fully-qualified
        text = "".join(chr(int(c, 16)) for c in codes.split())
        stats["considered"] += 1
        notes = []
        if group == "Component":
            stats["filtered"]["a component (skin tone or hair swatch), not an emoji on its own"] += 1
            continue
        if group not in GROUPS:
            fail(f"{EMOJI_TEST}: unknown group {group!r}")
        name, keywords = cldr.get(text.replace("\ufe0f", ""), (None, []))
        if name is None:
            # Newer than the CLDR release: emoji-test.txt carries the same short English name.
            name = re.sub(r"^\S+\s+E\d+\.\d+\s+", "", comment.strip())
            notes.append("named by emoji-test.txt (newer than the CLDR annotations)")
        if any(0x1F3FB <= ord(c) <= 0x1F3FF for c in text):
            notes.append("skin-tone variants")
        out.append({"key": codes, "text": text, "caption": emoji_caption(name, keywords), "category": group,
                    "origin": "U+" + " U+".join(codes.split()), "notes": notes})
    return out


# --- Open Clip Art ------------------------------------------------------------------------------
def read_clipart_metadata(path: pathlib.Path):
    """(title, description, [keywords], license URL) from the file's RDF work description."""
    work = None
    for _, el in ET.iterparse(path, events=("end",)):
        if el.tag == CC + "Work":
            work = el
            break
    if work is None:
        return "", "", [], ""

    def text(tag):
        el = work.find(DC + tag)
        return " ".join("".join(el.itertext()).split()) if el is not None else ""

    keywords = []
    subject = work.find(DC + "subject")
    if subject is not None:
        items = subject.findall(".//" + RDF + "li") or [subject]
        for item in items:
            keywords += [k.strip() for k in re.split(r"[,;]", item.text or "") if k.strip()]
    license_el = work.find(CC + "license")
    license_url = license_el.get(RDF + "resource", "") if license_el is not None else ""
    return text("title"), text("description"), keywords, license_url


def looks_like_file_name(text: str) -> bool:
    return " " not in text.strip() and bool(re.search(r"[_\d.]|[a-z][A-Z]", text))


def file_name_words(text: str) -> str:
    text = re.sub(r"\.(svg|png|jpe?g)$", "", text, flags=re.I)
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    words = [w for w in re.split(r"[\W_\d]+", text) if len(w) > 1]
    return " ".join(words).lower()


class ClipartCaptions:
    """Builds a caption from a file's title, description and keywords; counts every part it
    rejects, by reason."""

    def __init__(self, english: English):
        self.english = english
        self.rejected = {"title": collections.Counter(), "description": collections.Counter(),
                         "keyword": collections.Counter()}

    def title(self, raw: str):
        title = re.sub(r"^clipart by [^-]+ - ", "", raw.strip(), flags=re.I).strip(" .-")
        if not title:
            return self.reject("title", "empty")
        if PLACEHOLDER_TITLE.match(title):
            return self.reject("title", "placeholder (untitled, drawing, ...)")
        if any(w in title.lower() for w in COLLECTION_WORDS):
            return self.reject("title", "names a collection or theme")
        if META_DESCRIPTION.search(title):
            return self.reject("title", "about the file, not the picture")
        if looks_like_file_name(title):
            title = file_name_words(title)
            if not title or not self.english.phrase(title.split()):
                return self.reject("title", "file-name-like")
        if not re.search(r"[^\W\d_]{3}", title):
            return self.reject("title", "no word of three letters or more")
        if len(title.split()) > MAX_TITLE_WORDS:
            return self.reject("title", f"too long (over {MAX_TITLE_WORDS} words)")
        if self.english.share(title) < ENGLISH_SHARE:
            return self.reject("title", "not English")
        return title

    def description(self, raw: str, said):
        text = raw.strip().rstrip(".")
        if not text:
            return None
        if META_DESCRIPTION.search(text) or any(w in text.lower() for w in COLLECTION_WORDS):
            return self.reject("description", "about the file, not the picture")
        if len(text.split()) > MAX_DESCRIPTION_WORDS:
            return self.reject("description", f"too long (over {MAX_DESCRIPTION_WORDS} words)")
        if self.english.share(text) < ENGLISH_SHARE:
            return self.reject("description", "not English")
        if words_of(text) <= said:
            return self.reject("description", "repeats the title")
        return text

    def keyword(self, raw: str, said):
        k = raw.strip().lower().replace("_", " ")
        if raw.strip().lower() in GENERIC_KEYWORDS or k in GENERIC_KEYWORDS:
            return self.reject("keyword", "generic (a collection, theme or folder)")
        if len(k) < 3 or not re.search(r"[a-z]", k):
            return self.reject("keyword", "too short or no letters")
        if len(k.split()) > 3:
            return self.reject("keyword", "too long (over 3 words)")
        if not self.english.phrase(re.findall(r"[^\W\d_]+", k)):
            return self.reject("keyword", "not English")
        if words_of(k) <= said:
            return self.reject("keyword", "already in the caption")
        return k

    def reject(self, part: str, why: str):
        self.rejected[part][why] += 1
        return None

    def caption(self, title: str, description: str, keywords):
        parts = []
        said = set()
        t = self.title(title)
        if t:
            parts.append(t)
            said |= words_of(t)
        d = self.description(description, said)
        if d:
            parts.append(d)
            said |= words_of(d)
        extra = 0
        for raw in keywords:
            if extra == MAX_KEYWORDS:
                break
            k = self.keyword(raw, said)
            if k:
                parts.append(k)
                said |= words_of(k)
                extra += 1
        while len(", ".join(parts)) > MAX_CAPTION_CHARS and len(parts) > 1:
            parts.pop()
        caption = ", ".join(parts)
        return caption if caption and len(caption) <= MAX_CAPTION_CHARS else None


def keyword_category(words):
    found = set()
    for w in words:
        w = w.lower()
        for category, vocabulary in CATEGORY_INDEX.items():
            if w in vocabulary or (w.endswith("s") and w[:-1] in vocabulary):
                found.add(category)
    return found.pop() if len(found) == 1 else None


CATEGORY_INDEX = {category: set(words.split()) for category, words in CATEGORY_WORDS.items()}


def clipart_category(relative: pathlib.Path, caption: str, keywords):
    for folder in reversed(relative.parts[:-1]):
        if CLIPART_FOLDERS.get(folder):
            return CLIPART_FOLDERS[folder]
    words = re.findall(r"[a-z]+", caption.lower()) + [w for k in keywords for w in re.findall(r"[a-z]+", k.lower())]
    return keyword_category(words) or OTHER


def clipart_candidates(stats, english: English):
    require(OPENCLIPART, "openclipart-svg")
    # Several files live in two folders under one name (a general one and a more specific one)
    # with near-identical drawings; the most specific copy is kept.
    by_name = collections.defaultdict(list)
    for path in sorted(OPENCLIPART.rglob("*.svg")):
        if path.is_file() and not path.is_symlink():
            by_name[path.name].append(path)
    captions = ClipartCaptions(english)
    out = []
    for name in sorted(by_name):
        paths = sorted(by_name[name], key=lambda p: (-len(p.parts), str(p)))
        stats["considered"] += len(paths)
        if len(paths) > 1:
            stats["filtered"]["a copy of the same drawing in a less specific folder"] += len(paths) - 1
        path = paths[0]
        relative = path.relative_to(OPENCLIPART)
        excluded = next((why for f, why in CLIPART_EXCLUDED_FOLDERS.items() if f in relative.parts[:-1]), None)
        if excluded:
            stats["filtered"][excluded] += 1
            continue
        try:
            title, description, keywords, license_url = read_clipart_metadata(path)
        except ET.ParseError:
            stats["filtered"]["SVG is not well-formed XML"] += 1
            continue
        if license_url not in CLIPART_LICENSE_OK:
            stats["filtered"]["the file's own metadata names another license"] += 1
            continue
        caption = captions.caption(title, description, keywords)
        if caption is None:
            stats["filtered"]["no descriptive caption left after filtering"] += 1
            continue
        out.append({"key": str(relative), "path": path, "caption": caption,
                    "category": clipart_category(relative, caption, keywords), "origin": str(relative)})
    return out, captions.rejected


# --- Tango --------------------------------------------------------------------------------------
# Names whose last word is a state read better with it first: "folder-open" -> "open folder".
STATE_LAST = {"new", "open", "full", "remote", "missing", "loading", "muted", "offline", "encrypted", "urgent",
              "available", "idle"}
FACES = {"smile": "smiling face", "smile-big": "big smiling face", "grin": "grinning face", "wink": "winking face",
         "kiss": "kissing face", "surprise": "surprised face", "sad": "sad face", "crying": "crying face",
         "plain": "plain face", "angel": "angel face", "devilish": "devilish face", "glasses": "face with glasses",
         "monkey": "monkey face"}
TANGO_CONTEXTS = {"emotes": SMILEYS, "devices": OBJECTS}


def tango_caption(context: str, name: str) -> str:
    if name.startswith("face-") and name[5:] in FACES:
        return FACES[name[5:]] + " icon"
    words = name.split("-")
    if context == "mimetypes":
        words = [w for w in words if w not in ("x", "generic", "application")] + ["file"]
    if words[0] in ("weather", "dialog", "emblem") and len(words) > 1:
        words = words[1:] + [words[0]]
    elif len(words) > 1 and words[-1] in STATE_LAST:
        words = [words[-1]] + words[:-1]
    return " ".join(words) + " icon"


def tango_candidates(stats):
    require(TANGO, "tango-icon-theme")
    out = []
    for path in sorted(TANGO.glob("*/*.svg")):
        if path.is_symlink():
            continue  # old names of the same icons
        stats["considered"] += 1
        context = path.parent.name
        name = path.stem
        category = TANGO_CONTEXTS.get(context, ICON_CATEGORY)
        if context == "status" and name.startswith("weather-"):
            category = TRAVEL
        out.append({"key": f"{context}/{name}", "path": path, "caption": tango_caption(context, name),
                    "category": category, "origin": str(path.relative_to(TANGO.parent))})
    return out


# --- the run ------------------------------------------------------------------------------------
def cap_repeated_captions(candidates, most: int, rng: random.Random, stats):
    """At most `most` images per identical caption (the 1,375 generated stars of one collection
    would otherwise outnumber everything else); which ones is the seed's choice."""
    groups = collections.defaultdict(list)
    for c in candidates:
        groups[c["caption"].lower()].append(c)
    kept = []
    for caption in sorted(groups):
        group = sorted(groups[caption], key=lambda c: c["key"])
        if len(group) > most:
            stats["filtered"][f"caption shared by more than {most} images"] += len(group) - most
            group = rng.sample(group, most)
        kept += group
    return sorted(kept, key=lambda c: c["key"])


def render_source(source, candidates, paint, limit, jobs, stats):
    """Renders candidates in order (already shuffled) until `limit` are kept; returns them with
    their PNG bytes. The results do not depend on --jobs."""
    kept = []
    started = last = time.time()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        batch = max(8, 4 * jobs)
        for start in range(0, len(candidates), batch):
            if limit is not None and len(kept) >= limit:
                break
            chunk = candidates[start:start + batch]
            for c, (picture, why) in zip(chunk, pool.map(paint, chunk)):
                if limit is not None and len(kept) >= limit:
                    break
                done += 1
                if picture is None:
                    stats["filtered"][why] += 1
                    stats["not drawn"][c["origin"]] = why
                else:
                    kept.append({**c, "png": png_bytes(picture)})
            if time.time() - last > 15:
                last = time.time()
                say(f"  {source}: {done}/{len(candidates)} drawn, {len(kept)} kept, {last - started:.0f} s")
    stats["unused (--limit)"] = len(candidates) - done
    say(f"  {source}: {len(kept)} images from {done} drawn in {time.time() - started:.0f} s")
    return kept


def new_stats():
    return {"considered": 0, "filtered": collections.Counter(), "notes": collections.Counter(), "not drawn": {}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", required=True, type=pathlib.Path)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--limit", type=int, default=None, help="at most this many images per source")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-per-caption", type=int, default=20, help="images kept per identical caption")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds rsvg-convert may take per file")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="pictures drawn at once")
    args = ap.parse_args()
    if not 8 <= args.size <= 1024:
        fail(f"--size {args.size}: must be between 8 and 1024")
    if args.limit is not None and args.limit < 1:
        fail(f"--limit {args.limit}: must be at least 1")
    try:
        import PIL  # noqa: F401
    except ImportError:
        fail("Pillow is missing: run it with the venv's Python (.venv/bin/python; scripts/setup makes it)")
    if shutil.which("rsvg-convert") is None:
        fail("rsvg-convert is missing: install librsvg2-bin (scripts/setup does)")
    for path, package in ((EMOJI_FONT, EMOJI), (EMOJI_TEST, "unicode-data"), (CLDR / "annotations" / "en.xml",
                          "unicode-cldr-core"), (OPENCLIPART, CLIPART), (TANGO, ICONS), (WORDNET / "index.noun",
                          "wordnet-base")):
        require(path, package)

    started = time.time()
    english = English()
    stats = {s: new_stats() for s in SOURCES}
    say("reading captions")
    candidates = {EMOJI: emoji_candidates(stats[EMOJI])}
    candidates[CLIPART], rejected_parts = clipart_candidates(stats[CLIPART], english)
    candidates[ICONS] = tango_candidates(stats[ICONS])

    painter = EmojiPainter(args.size)
    paint = {
        EMOJI: lambda c: painter.paint(c["text"]),
        CLIPART: lambda c: render_svg(c["path"], args.size, args.timeout),
        ICONS: lambda c: render_svg(c["path"], args.size, args.timeout),
    }
    images = []
    for source in SOURCES:
        rng = random.Random(f"{args.seed}:{source}")
        chosen = cap_repeated_captions(candidates[source], args.max_per_caption, rng, stats[source])
        rng.shuffle(chosen)
        say(f"drawing {source}: {len(chosen)} candidates" + (f", up to {args.limit} kept" if args.limit else ""))
        kept = render_source(source, chosen, paint[source], args.limit, max(1, args.jobs), stats[source])
        stats[source]["kept"] = len(kept)
        for image in kept:
            stats[source]["notes"].update(image.get("notes", ()))
        images += [{**image, "source": source} for image in kept]

    random.Random(f"{args.seed}:order").shuffle(images)
    out = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    for old in (out / "images").glob("*.png"):
        if re.fullmatch(r"\d{6}\.png", old.name):
            old.unlink()
    records = []
    for n, image in enumerate(images):
        file = f"images/{n:06d}.png"
        (out / file).write_bytes(image["png"])
        records.append({"file": file, "caption": image["caption"], "category": image["category"],
                        "source": image["source"], "license": LICENSES[image["source"]], "origin": image["origin"]})
    categories = collections.Counter(r["category"] for r in records)
    write_json(out / "categories.json", dict(sorted(categories.items())))
    write_text(out / "captions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    summary = {
        "images": len(records),
        "size": args.size,
        "seed": args.seed,
        "limit": args.limit,
        "max_per_caption": args.max_per_caption,
        "seconds": round(time.time() - started, 1),
        "sources": {},
        "categories": dict(sorted(categories.items())),
        "licenses": dict(collections.Counter(r["license"] for r in records)),
        "rejected_caption_parts": {CLIPART: {part: dict(c.most_common()) for part, c in rejected_parts.items()}},
    }
    for source in SOURCES:
        s = stats[source]
        entry = {"package_version": package_version(source), "license": LICENSES[source],
                 "considered": s["considered"], "kept": s["kept"],
                 "filtered": dict(s["filtered"].most_common()), "unused (--limit)": s["unused (--limit)"]}
        if s["notes"]:
            entry["among the kept"] = dict(s["notes"].most_common())
        entry["not drawn"] = dict(sorted(s["not drawn"].items()))
        entry["categories"] = dict(sorted(collections.Counter(r["category"] for r in records
                                                              if r["source"] == source).items()))
        summary["sources"][source] = entry
    summary["packages"] = {p: package_version(p) for p in ("unicode-data", "unicode-cldr-core", "librsvg2-bin",
                                                            "wordnet-base")}
    write_json(out / "stats.json", summary)
    say(f"wrote {len(records)} images to {out} in {summary['seconds']:.0f} s: "
        + ", ".join(f"{s} {summary['sources'][s]['kept']}" for s in SOURCES))


def write_text(path: pathlib.Path, text: str):
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def write_json(path: pathlib.Path, value):
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
