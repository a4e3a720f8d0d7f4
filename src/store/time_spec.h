#pragma once
// The times people type on the command line for `tessera usage --since/--until`, and the way
// stored times are shown back. Times without an offset are UTC, so a query means the same thing
// on every machine, the server's included.
#include <cstdint>
#include <string>
#include <string_view>

namespace tessera {

// Unix milliseconds for `text`: an ISO date or date-time ("2026-11-26", "2026-11-26T10:00",
// "2026-11-26T10:00:00Z", "2026-11-26 10:00:00+02:00"), "now", or a span back from now_ms
// ("30s", "30m", "1h", "7d", "2w"). `what` names the flag in the error for anything else.
int64_t parse_time_spec(std::string_view text, int64_t now_ms, std::string_view what);

// "2026-11-26 10:00:00Z" for unix seconds.
std::string format_utc(int64_t unix_seconds);

}  // namespace tessera
