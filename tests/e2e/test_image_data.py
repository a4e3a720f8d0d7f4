"""tools/image_model/make_data.py on a small --limit: the training images of the tiny image model
decode at the asked size, show something, carry English captions, and the counts add up."""
import collections
import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

TOOL = ROOT / "tools" / "image_model" / "make_data.py"
NEEDED = {
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf": "fonts-noto-color-emoji",
    "/usr/share/unicode/emoji/emoji-test.txt": "unicode-data",
    "/usr/share/unicode/cldr/common/annotations/en.xml": "unicode-cldr-core",
    "/usr/share/openclipart/svg": "openclipart-svg",
    "/usr/share/icons/Tango/scalable": "tango-icon-theme",
    "/usr/share/wordnet/index.noun": "wordnet-base",
}
MISSING = [pkg for path, pkg in NEEDED.items() if not pathlib.Path(path).exists()]
if shutil.which("rsvg-convert") is None:
    MISSING.append("librsvg2-bin")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (scripts/setup installs them)")
Image = pytest.importorskip("PIL.Image")

SOURCES = ("fonts-noto-color-emoji", "openclipart-svg", "tango-icon-theme")
LIMIT = 6
SIZE = 48


def make(out: pathlib.Path, seed: int):
    proc = subprocess.run([sys.executable, str(TOOL), "-o", str(out), "--size", str(SIZE), "--limit", str(LIMIT),
                           "--seed", str(seed), "--jobs", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "captions.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("image-data") / "data"
    return out, make(out, seed=3)


def test_images_decode_at_the_size_and_show_something(data):
    out, records = data
    assert len(records) == LIMIT * len(SOURCES)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(pathlib.Path(r["file"]).name for r in records)
    for r in records:
        with Image.open(out / r["file"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (SIZE, SIZE), (r, im.mode, im.size)
            colors = im.getcolors(SIZE * SIZE)
            assert len(colors) > 1, r  # not one flat colour
            # Something besides the white background, as the tool promises: 2% of the pixels
            # visibly off white in some channel.
            off_white = sum(1 for x in range(SIZE) for y in range(SIZE) if min(im.getpixel((x, y))) < 235)
            assert off_white >= 0.02 * SIZE * SIZE, r
            # The subject sits inside a white margin, whatever its shape.
            ring = [(x, y) for x in range(SIZE) for y in (0, SIZE - 1)] + [(x, y) for y in range(SIZE) for x in (0, SIZE - 1)]
            assert all(im.getpixel(p) == (255, 255, 255) for p in ring), r


def test_captions_are_short_english_text(data):
    _, records = data
    for r in records:
        caption = r["caption"]
        assert caption.strip() == caption and 3 <= len(caption) <= 160, r
        assert re.search(r"[A-Za-z]{3,}", caption), r
        ascii_share = sum(c.isascii() for c in caption) / len(caption)
        assert ascii_share > 0.8, r
        assert "_" not in caption and "http" not in caption.lower() and "untitled" not in caption.lower(), r
        assert r["source"] in SOURCES and r["license"] and r["origin"], r
    by_source = collections.defaultdict(list)
    for r in records:
        by_source[r["source"]].append(r)
    assert all(c["caption"].endswith(" icon") for c in by_source["tango-icon-theme"])
    assert {r["license"].split(" ")[0] for r in by_source["openclipart-svg"]} == {"public-domain"}


def test_categories_and_stats_add_up(data):
    out, records = data
    categories = json.loads((out / "categories.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    counted = collections.Counter(r["category"] for r in records)
    assert categories == dict(counted)
    assert all(r["category"] in categories for r in records)
    assert stats["images"] == len(records) == sum(categories.values()) == sum(stats["licenses"].values())
    for source in SOURCES:
        s = stats["sources"][source]
        assert s["kept"] == LIMIT == sum(1 for r in records if r["source"] == source)
        assert s["considered"] == s["kept"] + sum(s["filtered"].values()) + s["unused (--limit)"], (source, s)
        assert s["unused (--limit)"] > 0
        assert sum(s["categories"].values()) == s["kept"]
    # The filters had something to filter in Open Clip Art.
    clipart = stats["sources"]["openclipart-svg"]["filtered"]
    assert clipart["no descriptive caption left after filtering"] > 100
    assert sum(stats["rejected_caption_parts"]["openclipart-svg"]["title"].values()) > 100
    assert stats["sources"]["fonts-noto-color-emoji"]["considered"] > 3000


def test_the_same_seed_gives_the_same_data(data, tmp_path):
    out, records = data
    again = make(tmp_path / "again", seed=3)
    assert again == records
    for r in records[:6]:
        assert (tmp_path / "again" / r["file"]).read_bytes() == (out / r["file"]).read_bytes()
    other = make(tmp_path / "other", seed=4)
    assert [r["origin"] for r in other] != [r["origin"] for r in records]


def test_a_missing_package_is_one_clear_line(tmp_path):
    script = ("import pathlib, sys\n"
              f"sys.path.insert(0, {str(TOOL.parent)!r})\n"
              "import make_data\n"
              "make_data.EMOJI_FONT = pathlib.Path('/nonexistent/NotoColorEmoji.ttf')\n"
              f"sys.argv = ['make_data.py', '-o', {str(tmp_path / 'out')!r}]\n"
              "make_data.main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("make_data.py: /nonexistent/NotoColorEmoji.ttf is missing: "
                                   "install fonts-noto-color-emoji (scripts/setup does)")
    assert not (tmp_path / "out").exists()
