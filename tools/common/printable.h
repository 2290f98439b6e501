// Names from a store or a live pager (any bytes but NUL) in human-readable
// output: control characters are shown escaped (\n, \t, \x1b, \x7f, and
// the C1 controls U+0080..U+009F as \u0085), so a name cannot move the
// cursor, clear the screen or fake a line of output. JSON output does not
// use this: it carries the exact bytes.
#pragma once

#include <string>
#include <string_view>

namespace kvpager::tools {

std::string printable(std::string_view s);

}  // namespace kvpager::tools
