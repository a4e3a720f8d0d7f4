#include "formats/png.h"

#include <fcntl.h>
#include <png.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>

#include "core/error.h"
#include "tokenizers/utf8.h"

namespace tessera {

namespace {

// libpng's own default limit on either side; also keeps width * channels within 32 bits.
constexpr int64_t kMaxSide = 1'000'000;
// Decoded pixels beyond this are refused rather than allocated (a 20-byte header can claim
// 10^6 x 10^6).
constexpr int64_t kMaxPixels = int64_t{1} << 28;
constexpr int kCompressionLevel = 6;

// What libpng's callbacks share with us. Plain data only: libpng longjmps across it.
struct PngIo {
  char error[240] = {};
  std::vector<uint8_t>* out = nullptr;  // writing
  const uint8_t* data = nullptr;        // reading
  size_t size = 0, pos = 0;
};

void on_error(png_structp png, png_const_charp message) {
  auto* io = static_cast<PngIo*>(png_get_error_ptr(png));
  std::snprintf(io->error, sizeof io->error, "%s", message ? message : "unknown libpng error");
  for (char& c : io->error)
    if (c == '\n' || c == '\r') c = ' ';
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

void on_write(png_structp png, png_bytep data, size_t length) {
  auto* io = static_cast<PngIo*>(png_get_io_ptr(png));
  bool failed = false;
  try {
    io->out->insert(io->out->end(), data, data + length);
  } catch (const std::bad_alloc&) {
    failed = true;  // no exception may cross libpng's C frames; png_error longjmps instead
  }
  if (failed) png_error(png, "out of memory");
}

void on_flush(png_structp) {}

void on_read(png_structp png, png_bytep data, size_t length) {
  auto* io = static_cast<PngIo*>(png_get_io_ptr(png));
  if (length > io->size - io->pos) png_error(png, "unexpected end of data (truncated file?)");
  std::memcpy(data, io->data + io->pos, length);
  io->pos += length;
}

// The functions below call libpng between a setjmp and the end of the function, and so own no
// C++ objects: a longjmp out of libpng lands on their setjmp and must skip no destructors.
// Each returns false with io.error set when libpng fails.

bool libpng_write(png_structp png, png_infop info, PngIo& io, png_uint_32 width, png_uint_32 height, int color_type,
                  png_bytepp rows, png_textp texts, int text_count) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, &io, on_write, on_flush);
  png_set_IHDR(png, info, width, height, 8, color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, kCompressionLevel);
  if (text_count > 0) png_set_text(png, info, texts, text_count);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  return true;
}

// Reads up to the pixel data and asks libpng for 8-bit RGB or RGBA whatever the file holds.
bool libpng_read_header(png_structp png, png_infop info, PngIo& io, png_uint_32* width, png_uint_32* height,
                        int* channels, size_t* row_bytes) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, &io, on_read);
  png_set_user_limits(png, kMaxSide, kMaxSide);
  png_set_chunk_cache_max(png, 1000);
  png_set_chunk_malloc_max(png, 64u << 20);
  png_read_info(png, info);
  const int color_type = png_get_color_type(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  if (bit_depth == 16) png_set_scale_16(png);
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  *width = png_get_image_width(png, info);
  *height = png_get_image_height(png, info);
  *channels = png_get_channels(png, info);
  *row_bytes = png_get_rowbytes(png, info);
  return true;
}

bool libpng_read_pixels(png_structp png, png_infop end_info, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  png_read_end(png, end_info);
  return true;
}

// UTF-8 -> Latin-1 when every character is U+0000..U+00FF.
bool to_latin1(const std::string& utf8, std::string& out) {
  out.clear();
  for (size_t i = 0; i < utf8.size(); ++i) {
    const auto c = static_cast<unsigned char>(utf8[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if ((c == 0xC2 || c == 0xC3) && i + 1 < utf8.size()) {
      out += static_cast<char>(((c & 0x1F) << 6) | (static_cast<unsigned char>(utf8[++i]) & 0x3F));
    } else {
      return false;
    }
  }
  return true;
}

std::string latin1_to_utf8(const char* text, size_t length) {
  std::string out;
  out.reserve(length);
  for (size_t i = 0; i < length; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

// PNG keywords: 1-79 printable Latin-1 characters, no leading, trailing or consecutive spaces.
std::string png_keyword(const std::string& key) {
  std::string latin1;
  if (!utf8::is_valid(key) || !to_latin1(key, latin1))
    fail("cannot encode PNG: text keyword '{}' is not Latin-1", key);
  if (latin1.empty() || latin1.size() > 79)
    fail("cannot encode PNG: text keyword '{}' has {} characters (1 to 79 allowed)", key, latin1.size());
  for (size_t i = 0; i < latin1.size(); ++i) {
    const auto c = static_cast<unsigned char>(latin1[i]);
    const bool printable = (c >= 32 && c <= 126) || c >= 161;
    if (!printable) fail("cannot encode PNG: text keyword '{}' has an unprintable character", key);
    if (c == ' ' && (i == 0 || i + 1 == latin1.size() || latin1[i - 1] == ' '))
      fail("cannot encode PNG: text keyword '{}' has leading, trailing or doubled spaces", key);
  }
  return latin1;
}

struct WriteStructs {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~WriteStructs() { png_destroy_write_struct(&png, info ? &info : nullptr); }
};

struct ReadStructs {
  png_structp png = nullptr;
  png_infop info = nullptr, end_info = nullptr;
  ~ReadStructs() { png_destroy_read_struct(&png, info ? &info : nullptr, end_info ? &end_info : nullptr); }
};

}  // namespace

std::vector<uint8_t> encode_png(const PngImage& image) {
  if (image.channels != 3 && image.channels != 4)
    fail("cannot encode PNG: {} channels (expected 3 for RGB or 4 for RGBA)", image.channels);
  if (image.width < 1 || image.height < 1 || image.width > kMaxSide || image.height > kMaxSide)
    fail("cannot encode PNG: size {}x{} (each side must be 1 to {})", image.width, image.height, kMaxSide);
  const auto row_bytes = static_cast<size_t>(image.width * image.channels);
  const size_t needed = row_bytes * static_cast<size_t>(image.height);
  if (image.pixels.size() != needed)
    fail("cannot encode PNG: {} bytes of pixels, but {}x{}x{} needs {}", image.pixels.size(), image.width,
         image.height, image.channels, needed);

  // Keywords and values converted for libpng; png_text points into these strings.
  std::vector<std::string> keys, values;
  std::vector<png_text> texts(image.text.size());
  keys.reserve(image.text.size());
  values.reserve(image.text.size());
  for (size_t i = 0; i < image.text.size(); ++i) {
    const auto& [key, value] = image.text[i];
    keys.push_back(png_keyword(key));
    if (!utf8::is_valid(value)) fail("cannot encode PNG: the value of text '{}' is not valid UTF-8", key);
    if (value.find('\0') != std::string::npos) fail("cannot encode PNG: the value of text '{}' contains a NUL", key);
    std::string latin1;
    const bool is_latin1 = to_latin1(value, latin1);
    values.push_back(is_latin1 ? latin1 : value);
    png_text& t = texts[i];
    std::memset(&t, 0, sizeof t);
    t.compression = is_latin1 ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    t.key = keys.back().data();
    t.text = values.back().data();
    if (is_latin1) {
      t.text_length = values.back().size();
    } else {
      t.itxt_length = values.back().size();
      t.lang = const_cast<char*>("");
      t.lang_key = const_cast<char*>("");
    }
  }

  std::vector<png_bytep> rows(static_cast<size_t>(image.height));
  for (size_t y = 0; y < rows.size(); ++y) rows[y] = const_cast<png_bytep>(image.pixels.data() + y * row_bytes);

  std::vector<uint8_t> out;
  out.reserve(needed / 2 + 1024);
  PngIo io;
  io.out = &out;
  WriteStructs s;
  s.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &io, on_error, on_warning);
  if (s.png) s.info = png_create_info_struct(s.png);
  if (!s.png || !s.info) fail("cannot encode PNG: out of memory");
  const int color_type = image.channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB;
  if (!libpng_write(s.png, s.info, io, static_cast<png_uint_32>(image.width), static_cast<png_uint_32>(image.height),
                    color_type, rows.data(), texts.data(), static_cast<int>(texts.size())))
    fail("cannot encode PNG: {}", io.error);
  return out;
}

void write_png(const std::filesystem::path& path, const PngImage& image) {
  std::vector<uint8_t> bytes;
  try {
    bytes = encode_png(image);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = fmt::format("{}.tmp.{}.{}", path.string(), static_cast<long>(getpid()), counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) fail("{}: cannot write ({})", path.string(), std::strerror(errno));
  size_t done = 0;
  int err = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    fail("{}: cannot write ({})", path.string(), std::strerror(err));
  }
}

PngImage decode_png(std::span<const uint8_t> bytes, const std::string& origin) {
  if (bytes.size() < 8 || png_sig_cmp(bytes.data(), 0, 8) != 0)
    fail("{}: not a PNG file (no PNG signature in the first 8 bytes)", origin);
  // libpng takes an oversized ancillary chunk length as a mere warning and allocates (and
  // clears) the claimed size before reading; with the whole file at hand, no chunk may claim
  // more than what is left of it.
  for (size_t pos = 8; pos < bytes.size();) {
    if (bytes.size() - pos < 12)
      fail("{}: corrupt PNG (unexpected end of data: {} bytes at byte {} where a chunk should be)", origin,
           bytes.size() - pos, pos);
    const uint32_t length = (uint32_t{bytes[pos]} << 24) | (uint32_t{bytes[pos + 1]} << 16) |
                            (uint32_t{bytes[pos + 2]} << 8) | uint32_t{bytes[pos + 3]};
    const std::string type(reinterpret_cast<const char*>(bytes.data() + pos + 4), 4);
    if (length > bytes.size() - pos - 12)
      fail("{}: corrupt PNG (unexpected end of data: the chunk at byte {} claims {} bytes, {} are left)", origin, pos,
           length, bytes.size() - pos - 12);
    pos += 12 + size_t{length};
    if (type == "IEND") break;
  }
  PngIo io;
  io.data = bytes.data();
  io.size = bytes.size();
  ReadStructs s;
  s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, on_error, on_warning);
  if (s.png) s.info = png_create_info_struct(s.png);
  if (s.info) s.end_info = png_create_info_struct(s.png);
  if (!s.png || !s.info || !s.end_info) fail("{}: cannot decode PNG: out of memory", origin);

  png_uint_32 width = 0, height = 0;
  int channels = 0;
  size_t row_bytes = 0;
  if (!libpng_read_header(s.png, s.info, io, &width, &height, &channels, &row_bytes))
    fail("{}: corrupt PNG ({})", origin, io.error);
  if (channels != 3 && channels != 4)
    fail("{}: cannot decode PNG: {} channels after conversion (expected 3 or 4)", origin, channels);
  if (static_cast<int64_t>(width) * height > kMaxPixels)
    fail("{}: PNG is {}x{}, more than the {} pixels allowed", origin, width, height, kMaxPixels);
  if (row_bytes != static_cast<size_t>(width) * channels)
    fail("{}: cannot decode PNG: unexpected row size {} for width {}", origin, row_bytes, width);

  PngImage image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  image.pixels.resize(row_bytes * height);
  std::vector<png_bytep> rows(height);
  for (size_t y = 0; y < height; ++y) rows[y] = image.pixels.data() + y * row_bytes;
  if (!libpng_read_pixels(s.png, s.end_info, rows.data())) fail("{}: corrupt PNG ({})", origin, io.error);

  // Text before the image data lands in info, text after it in end_info.
  for (png_infop where : {s.info, s.end_info}) {
    png_textp texts = nullptr;
    const int count = png_get_text(s.png, where, &texts, nullptr);
    for (int i = 0; i < count; ++i) {
      const png_text& t = texts[i];
      std::string key = latin1_to_utf8(t.key, std::strlen(t.key));
      const bool itxt = t.compression == PNG_ITXT_COMPRESSION_NONE || t.compression == PNG_ITXT_COMPRESSION_zTXt;
      std::string value = itxt ? std::string(t.text ? t.text : "", t.itxt_length)
                               : latin1_to_utf8(t.text ? t.text : "", t.text_length);
      image.text.emplace_back(std::move(key), std::move(value));
    }
  }
  return image;
}

PngImage read_png(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open ({})", path.string(), std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read failed", path.string());
  return decode_png(bytes, path.string());
}

}  // namespace tessera
