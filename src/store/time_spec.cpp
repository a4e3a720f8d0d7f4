#include "store/time_spec.h"

#include <charconv>
#include <optional>

#include <fmt/format.h>

#include "core/error.h"

namespace tessera {

namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

void civil_from_days(int64_t z, int64_t& y, int64_t& m, int64_t& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = yoe + era * 400 + (m <= 2);
}

int days_in_month(int64_t y, int64_t m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

// Reads exactly `digits` decimal digits at text[pos], advancing pos.
std::optional<int64_t> take_digits(std::string_view text, size_t& pos, size_t digits) {
  if (pos + digits > text.size()) return std::nullopt;
  int64_t value = 0;
  for (size_t i = 0; i < digits; ++i) {
    const char c = text[pos + i];
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  pos += digits;
  return value;
}

bool take_char(std::string_view text, size_t& pos, char c) {
  if (pos < text.size() && text[pos] == c) {
    ++pos;
    return true;
  }
  return false;
}

std::optional<int64_t> parse_relative(std::string_view text, int64_t now_ms) {
  if (text.size() < 2) return std::nullopt;
  int64_t unit_ms = 0;
  switch (text.back()) {
    case 's': unit_ms = 1000; break;
    case 'm': unit_ms = 60'000; break;
    case 'h': unit_ms = 3'600'000; break;
    case 'd': unit_ms = 86'400'000; break;
    case 'w': unit_ms = 7 * 86'400'000LL; break;
    default: return std::nullopt;
  }
  int64_t n = 0;
  const char* end = text.data() + text.size() - 1;
  const auto [ptr, ec] = std::from_chars(text.data(), end, n);
  if (ec != std::errc() || ptr != end || n < 0 || text[0] == '-') return std::nullopt;
  // Beyond ~290 million years the product would overflow; nobody meters that far back.
  if (n > 100'000 * 365LL * 86'400'000 / unit_ms) return std::nullopt;
  return now_ms - n * unit_ms;
}

}  // namespace

int64_t parse_time_spec(std::string_view text, int64_t now_ms, std::string_view what) {
  const auto bad = [&]() {
    fail("{}: cannot read '{}' as a time: give a date like 2026-11-26, a time like 2026-11-26T10:00:00Z, or a span "
         "back from now like 30m, 1h, 7d",
         what, text);
  };
  if (text == "now") return now_ms;
  if (auto t = parse_relative(text, now_ms)) return *t;

  size_t pos = 0;
  const auto year = take_digits(text, pos, 4);
  if (!year || !take_char(text, pos, '-')) bad();
  const auto month = take_digits(text, pos, 2);
  if (!month || !take_char(text, pos, '-')) bad();
  const auto day = take_digits(text, pos, 2);
  if (!day) bad();
  if (*month < 1 || *month > 12 || *day < 1 || *day > days_in_month(*year, *month))
    fail("{}: '{}' is not a calendar date", what, text);
  int64_t hour = 0, minute = 0, second = 0, millis = 0, offset_minutes = 0;
  if (pos < text.size()) {
    if (!take_char(text, pos, 'T') && !take_char(text, pos, ' ')) bad();
    const auto h = take_digits(text, pos, 2);
    if (!h || !take_char(text, pos, ':')) bad();
    const auto mi = take_digits(text, pos, 2);
    if (!mi) bad();
    hour = *h;
    minute = *mi;
    if (take_char(text, pos, ':')) {
      const auto s = take_digits(text, pos, 2);
      if (!s) bad();
      second = *s;
      if (take_char(text, pos, '.')) {
        // Fractions of a second: milliseconds kept, finer digits read and dropped.
        size_t digits = 0;
        int64_t scale = 100;
        while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
          millis += (text[pos] - '0') * scale;
          scale /= 10;
          ++pos;
          ++digits;
        }
        if (digits == 0) bad();
      }
    }
    if (hour > 23 || minute > 59 || second > 59) fail("{}: '{}' is not a time of day", what, text);
    if (take_char(text, pos, 'Z') || take_char(text, pos, 'z')) {
    } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
      const int64_t sign = text[pos] == '-' ? -1 : 1;
      ++pos;
      const auto oh = take_digits(text, pos, 2);
      if (!oh) bad();
      take_char(text, pos, ':');
      const auto om = take_digits(text, pos, 2);
      if (!om || *oh > 23 || *om > 59) bad();
      offset_minutes = sign * (*oh * 60 + *om);
    }
  }
  if (pos != text.size()) bad();
  const int64_t seconds =
      days_from_civil(*year, *month, *day) * 86'400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
  return seconds * 1000 + millis;
}

std::string format_utc(int64_t unix_seconds) {
  int64_t days = unix_seconds / 86'400, rem = unix_seconds % 86'400;
  if (rem < 0) {
    rem += 86'400;
    --days;
  }
  int64_t y, m, d;
  civil_from_days(days, y, m, d);
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z", y, m, d, rem / 3600, rem / 60 % 60, rem % 60);
}

}  // namespace tessera
