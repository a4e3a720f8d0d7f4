// The build's own paths, compiled into this one file so that the other test files do not
// depend on where the checkout lies (and stay in the compiler cache across checkouts).
#include "test_util.h"

namespace tessera::testing {
const char* tessera_binary() { return TESSERA_BINARY; }
}  // namespace tessera::testing
