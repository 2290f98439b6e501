# Project-wide warning and sanitizer flags, applied through an interface target
# so that third-party code is not affected. (-Wnull-dereference is left out:
# GCC 12 reports false positives inside libstdc++ inlined into CLI11.)
add_library(kvpager_flags INTERFACE)
target_compile_options(kvpager_flags INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast
  -Wcast-align -Wunused -Woverloaded-virtual -Wconversion -Wsign-conversion
  -Wdouble-promotion -Wformat=2 -Wimplicit-fallthrough)
if(KVPAGER_WERROR)
  target_compile_options(kvpager_flags INTERFACE -Werror)
endif()
if(KVPAGER_CHECK_INVARIANTS)
  target_compile_definitions(kvpager_flags INTERFACE KVPAGER_CHECK_INVARIANTS=1)
endif()
if(KVPAGER_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_compile_options(${_san})
  add_link_options(${_san})
endif()
