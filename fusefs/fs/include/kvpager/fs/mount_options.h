// The -o options kvpager-fs takes besides libfuse's own: one text for its
// usage and for `kvpager mount --help`, so neither help misses one.
// (kvpager_fs_main.cpp's take_mount_options() parses them.)
#pragma once

namespace kvpager::fs {

inline constexpr const char* kMountOptionsHelp =
    "namespace=NS (the store namespace shown; default \"\"),\n"
    "entry_timeout=S, attr_timeout=S (kernel caching of the contexts tree, seconds;\n"
    "default 10; changes are invalidated at once anyway), read_window=N (chunks read\n"
    "ahead of a reader; default 8), allow_other (other users may enter; modes still\n"
    "apply), ro, and any libfuse mount option";

}  // namespace kvpager::fs
