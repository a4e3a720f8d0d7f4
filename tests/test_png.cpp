#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "formats/png.h"
#include "test_util.h"

using namespace tessera;
using tessera::testing::error_of;
using tessera::testing::fixtures;
using tessera::testing::TempDir;

namespace {

// The formula of tools/golden/make_png_golden.py.
uint8_t formula(int64_t x, int64_t y, int64_t c) { return static_cast<uint8_t>((x * 37 + y * 11 + c * 71) % 256); }

PngImage random_image(int64_t width, int64_t height, int64_t channels, uint64_t seed) {
  PngImage image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  Rng rng(seed);
  image.pixels.resize(static_cast<size_t>(width * height * channels));
  for (auto& p : image.pixels) p = static_cast<uint8_t>(rng.below(256));
  return image;
}

struct Chunk {
  std::string type;
  std::string data;
};

std::vector<Chunk> chunks_of(const std::vector<uint8_t>& png) {
  std::vector<Chunk> out;
  size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const uint32_t length = (uint32_t{png[pos]} << 24) | (uint32_t{png[pos + 1]} << 16) | (uint32_t{png[pos + 2]} << 8) | png[pos + 3];
    out.push_back({std::string(png.begin() + pos + 4, png.begin() + pos + 8),
                   std::string(png.begin() + pos + 8, png.begin() + pos + 8 + length)});
    pos += 12 + length;
  }
  return out;
}

// Rewrites the CRC of the chunk whose data starts at `data_pos`, `length` bytes long.
void fix_crc(std::vector<uint8_t>& png, size_t data_pos, size_t length) {
  const uLong crc = crc32(0, png.data() + data_pos - 4, static_cast<uInt>(length + 4));
  for (int i = 0; i < 4; ++i) png[data_pos + length + i] = static_cast<uint8_t>(crc >> (24 - 8 * i));
}

std::vector<uint8_t> file_bytes(const std::filesystem::path& path) {
  const std::string s = tessera::testing::read_file(path);
  return {s.begin(), s.end()};
}

}  // namespace

TEST(Png, RoundTripRgbAndRgbaWithText) {
  for (int64_t channels : {3, 4}) {
    PngImage image = random_image(37, 11, channels, 7 + channels);
    image.text = {{"parameters", "a cat, steps: 20, seed: 42"},
                  {"Comment", "caf\u00e9 \u00bd"},
                  {"prompt", "\u65e5\u672c\u306e\u732b \u2713"},
                  {"empty", ""},
                  {"Title", "multi\nline\ttext"}};
    const std::vector<uint8_t> bytes = encode_png(image);
    const PngImage back = decode_png(bytes, "memory.png");
    EXPECT_EQ(back.width, 37);
    EXPECT_EQ(back.height, 11);
    EXPECT_EQ(back.channels, channels);
    EXPECT_EQ(back.pixels, image.pixels);
    EXPECT_EQ(back.text, image.text);
  }
  // The smallest image.
  PngImage one = random_image(1, 1, 3, 1);
  EXPECT_EQ(decode_png(encode_png(one), "one").pixels, one.pixels);
}

TEST(Png, EncodingIsDeterministicAndUsesTheRightTextChunks) {
  PngImage image = random_image(64, 48, 4, 3);
  image.text = {{"Software", "tessera"}, {"Comment", "na\u00efve"}, {"prompt", "\u2713 done"}};
  const std::vector<uint8_t> a = encode_png(image), b = encode_png(image);
  EXPECT_EQ(a, b);

  std::vector<std::string> types;
  std::map<std::string, std::string> data;
  for (const auto& chunk : chunks_of(a)) {
    types.push_back(chunk.type);
    data[chunk.type] += chunk.data + "|";
  }
  EXPECT_EQ(types.front(), "IHDR");
  EXPECT_EQ(types.back(), "IEND");
  EXPECT_EQ(std::count(types.begin(), types.end(), "tIME"), 0);
  EXPECT_EQ(std::count(types.begin(), types.end(), "tEXt"), 2);
  EXPECT_EQ(std::count(types.begin(), types.end(), "iTXt"), 1);
  // tEXt holds Latin-1 bytes, iTXt UTF-8.
  EXPECT_NE(data["tEXt"].find(std::string("Comment\0na\xefve", 13)), std::string::npos);
  EXPECT_NE(data["iTXt"].find("\u2713 done"), std::string::npos);

  TempDir dir;
  write_png(dir / "a.png", image);
  write_png(dir / "b.png", image);
  EXPECT_EQ(file_bytes(dir / "a.png"), a);
  EXPECT_EQ(file_bytes(dir / "b.png"), a);
  EXPECT_EQ(read_png(dir / "a.png").pixels, image.pixels);
}

TEST(Png, WriteReplacesAtomicallyAndLeavesNoTemporaryFiles) {
  TempDir dir;
  const auto path = dir / "out.png";
  write_png(path, random_image(8, 8, 3, 1));
  const PngImage second = random_image(5, 3, 4, 2);
  write_png(path, second);
  EXPECT_EQ(read_png(path).pixels, second.pixels);
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "out.png");
  }
  EXPECT_EQ(files, 1);

  // A failed encode leaves the old file alone.
  PngImage bad = second;
  bad.pixels.pop_back();
  EXPECT_NE(error_of([&] { write_png(path, bad); }), "");
  EXPECT_EQ(read_png(path).pixels, second.pixels);
}

TEST(Png, DecodesWhatPillowWrites) {
  const auto dir = fixtures() / "png";
  struct Expect {
    const char* file;
    int64_t width, height, channels;
    std::function<uint8_t(int64_t, int64_t, int64_t)> pixel;
  };
  const std::array<std::array<uint8_t, 3>, 4> palette = {{{255, 0, 0}, {0, 128, 0}, {10, 20, 250}, {200, 200, 7}}};
  const Expect cases[] = {
      {"rgb_text.png", 13, 7, 3, formula},
      {"rgba.png", 9, 6, 4, formula},
      {"gray.png", 5, 4, 3, [](int64_t x, int64_t y, int64_t) { return formula(x, y, 0); }},
      {"gray_alpha.png", 5, 4, 4,
       [](int64_t x, int64_t y, int64_t c) { return c == 3 ? formula(x, y, 1) : formula(x, y, 0); }},
      {"gray16.png", 5, 4, 3, [](int64_t x, int64_t y, int64_t) { return formula(x, y, 0); }},
      {"bilevel.png", 6, 3, 3, [](int64_t x, int64_t y, int64_t) { return static_cast<uint8_t>((x + y) % 2 ? 255 : 0); }},
      {"palette_trns.png", 6, 3, 4,
       [&](int64_t x, int64_t y, int64_t c) {
         const int64_t index = (x + 2 * y) % 4;
         return c == 3 ? static_cast<uint8_t>(index == 0 ? 0 : 255) : palette[index][c];
       }},
  };
  for (const auto& e : cases) {
    SCOPED_TRACE(e.file);
    const PngImage image = read_png(dir / e.file);
    ASSERT_EQ(image.width, e.width);
    ASSERT_EQ(image.height, e.height);
    ASSERT_EQ(image.channels, e.channels);
    int wrong = 0;
    for (int64_t y = 0; y < e.height; ++y)
      for (int64_t x = 0; x < e.width; ++x)
        for (int64_t c = 0; c < e.channels; ++c)
          wrong += image.pixels[(y * e.width + x) * e.channels + c] != e.pixel(x, y, c);
    EXPECT_EQ(wrong, 0);
  }
  const PngImage text = read_png(dir / "rgb_text.png");
  std::string zipped;
  for (int i = 0; i < 20; ++i) zipped += "compressed ";
  const std::vector<std::pair<std::string, std::string>> want = {
      {"Title", "tessera"},
      {"Comment", "caf\u00e9 na\u00efve \u00d7 \u00bd"},
      {"Zipped", zipped},
      {"parameters", "prompt: \u65e5\u672c\u306e\u732b \u2713, steps: 20"}};
  EXPECT_EQ(text.text, want);
}

// Pillow reads our files: pixels and text. Needs the dev venv (scripts/setup); skipped without.
TEST(Png, PillowReadsWhatWeWrite) {
  const auto python = tessera::testing::source_dir() / ".venv" / "bin" / "python";
  if (!std::filesystem::exists(python)) GTEST_SKIP() << python << " is missing";
  TempDir dir;
  PngImage image = random_image(7, 5, 4, 11);
  image.text = {{"parameters", "steps: 20"}, {"Comment", "caf\u00e9"}, {"prompt", "\u732b \u2713"}};
  write_png(dir / "t.png", image);
  PngImage rgb = random_image(6, 2, 3, 12);
  write_png(dir / "rgb.png", rgb);

  const std::string script =
      "import json, sys\n"
      "from PIL import Image\n"
      "out = []\n"
      "for path in sys.argv[1:]:\n"
      "    with Image.open(path) as im:\n"
      "        im.verify()\n"
      "    with Image.open(path) as im:\n"
      "        im.load()\n"
      "        out.append({'mode': im.mode, 'size': list(im.size), 'text': im.text, 'pixels': list(im.tobytes())})\n"
      "print(json.dumps(out))\n";
  tessera::testing::write_file(dir / "check.py", script);
  const std::string cmd = fmt::format("'{}' '{}' '{}' '{}' 2>&1", python.string(), (dir / "check.py").string(),
                                      (dir / "t.png").string(), (dir / "rgb.png").string());
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  ASSERT_EQ(pclose(pipe), 0) << output;
  const auto result = nlohmann::json::parse(output);
  ASSERT_EQ(result.size(), 2u);
  EXPECT_EQ(result[0]["mode"], "RGBA");
  EXPECT_EQ(result[0]["size"], nlohmann::json::array({7, 5}));
  EXPECT_EQ(result[0]["pixels"].get<std::vector<uint8_t>>(), image.pixels);
  EXPECT_EQ(result[0]["text"]["parameters"], "steps: 20");
  EXPECT_EQ(result[0]["text"]["Comment"], "caf\u00e9");
  EXPECT_EQ(result[0]["text"]["prompt"], "\u732b \u2713");
  EXPECT_EQ(result[1]["mode"], "RGB");
  EXPECT_EQ(result[1]["pixels"].get<std::vector<uint8_t>>(), rgb.pixels);
}

TEST(Png, EncodeRejectsBadImagesAndText) {
  auto error_for = [](PngImage image) { return error_of([&] { encode_png(image); }); };
  PngImage good = random_image(4, 3, 3, 5);
  EXPECT_EQ(error_for(good), "");

  PngImage two = good;
  two.channels = 2;
  EXPECT_NE(error_for(two).find("2 channels"), std::string::npos);
  PngImage empty = good;
  empty.width = 0;
  empty.pixels.clear();
  EXPECT_NE(error_for(empty).find("size 0x3"), std::string::npos);
  PngImage short_pixels = good;
  short_pixels.pixels.resize(35);
  EXPECT_NE(error_for(short_pixels).find("35 bytes of pixels, but 4x3x3 needs 36"), std::string::npos);

  auto text_error = [&](const std::string& key, const std::string& value) {
    PngImage image = good;
    image.text = {{key, value}};
    return error_for(image);
  };
  EXPECT_NE(text_error("", "v").find("has 0 characters"), std::string::npos);
  EXPECT_NE(text_error(std::string(80, 'k'), "v").find("has 80 characters"), std::string::npos);
  EXPECT_EQ(text_error(std::string(79, 'k'), "v"), "");
  EXPECT_EQ(text_error("caf\u00e9", "v"), "");  // Latin-1 keyword
  EXPECT_NE(text_error("\u732b", "v").find("is not Latin-1"), std::string::npos);
  EXPECT_NE(text_error(" lead", "v").find("spaces"), std::string::npos);
  EXPECT_NE(text_error("dou  ble", "v").find("spaces"), std::string::npos);
  EXPECT_NE(text_error("tab\tkey", "v").find("unprintable"), std::string::npos);
  EXPECT_NE(text_error("k", std::string("a\0b", 3)).find("contains a NUL"), std::string::npos);
  EXPECT_NE(text_error("k", "bad \xff utf8").find("not valid UTF-8"), std::string::npos);

  TempDir dir;
  const std::string err = error_of([&] { write_png(dir / "x.png", short_pixels); });
  EXPECT_NE(err.find((dir / "x.png").string() + ": cannot encode PNG"), std::string::npos) << err;
  const std::string missing_dir = error_of([&] { write_png(dir / "no" / "such" / "x.png", good); });
  EXPECT_NE(missing_dir.find("no/such/x.png: cannot write (No such file or directory)"), std::string::npos)
      << missing_dir;
  std::filesystem::create_directory(dir / "folder.png");
  const std::string onto_dir = error_of([&] { write_png(dir / "folder.png", good); });
  EXPECT_NE(onto_dir.find("folder.png: cannot write"), std::string::npos) << onto_dir;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
}

TEST(Png, CorruptOrTruncatedDataIsAnErrorNamingTheOrigin) {
  PngImage image = random_image(16, 9, 3, 9);
  image.text = {{"parameters", "steps: 20"}, {"prompt", "\u732b"}};
  const std::vector<uint8_t> good = encode_png(image);

  EXPECT_NE(error_of([] { decode_png({}, "empty.png"); }).find("empty.png: not a PNG file"), std::string::npos);
  const std::string text = "GIF89a this is not a png";
  const std::vector<uint8_t> gif(text.begin(), text.end());
  EXPECT_NE(error_of([&] { decode_png(gif, "x.gif"); }).find("x.gif: not a PNG file"), std::string::npos);

  // Every truncation fails cleanly.
  for (size_t cut = 0; cut < good.size(); ++cut) {
    const std::string err = error_of([&] { decode_png(std::span(good.data(), cut), "cut.png"); });
    ASSERT_EQ(err.rfind("cut.png: ", 0), 0u) << "cut at " << cut << ": '" << err << "'";
    ASSERT_EQ(err.find('\n'), std::string::npos) << err;
  }
  const std::string truncated = error_of([&] { decode_png(std::span(good.data(), good.size() - 20), "t.png"); });
  EXPECT_NE(truncated.find("t.png: corrupt PNG (unexpected end of data"), std::string::npos) << truncated;

  // Every single-byte change either decodes or fails with one line naming the origin.
  int failures = 0;
  for (size_t pos = 0; pos < good.size(); ++pos) {
    std::vector<uint8_t> bad = good;
    bad[pos] ^= 0x5a;
    const std::string err = error_of([&] { decode_png(bad, "flip.png"); });
    if (!err.empty()) {
      ++failures;
      ASSERT_EQ(err.rfind("flip.png: ", 0), 0u) << err;
      ASSERT_EQ(err.find('\n'), std::string::npos) << err;
    }
  }
  EXPECT_GT(failures, static_cast<int>(good.size() / 2));

  // Damage inside the compressed pixels with a valid CRC reaches zlib.
  size_t pos = 8;
  for (const auto& chunk : chunks_of(good)) {
    if (chunk.type == "IDAT") {
      std::vector<uint8_t> bad = good;
      for (size_t i = 2; i < chunk.data.size(); i += 3) bad[pos + 8 + i] ^= 0xff;
      fix_crc(bad, pos + 8, chunk.data.size());
      const std::string err = error_of([&] { decode_png(bad, "zlib.png"); });
      EXPECT_NE(err.find("zlib.png: corrupt PNG"), std::string::npos) << err;
      break;
    }
    pos += 12 + chunk.data.size();
  }

  // A header that claims a huge image is refused before anything is allocated.
  std::vector<uint8_t> huge = good;
  const uint32_t side = 60000;
  for (int i = 0; i < 4; ++i) huge[16 + i] = huge[20 + i] = static_cast<uint8_t>(side >> (24 - 8 * i));
  fix_crc(huge, 16, 13);
  const std::string err = error_of([&] { decode_png(huge, "huge.png"); });
  EXPECT_NE(err.find("huge.png: PNG is 60000x60000, more than"), std::string::npos) << err;

  const std::string missing = error_of([] { read_png("/nonexistent/image.png"); });
  EXPECT_NE(missing.find("/nonexistent/image.png: cannot open"), std::string::npos) << missing;
}
