# Every dependency comes from Debian packages (scripts/setup installs them).
find_package(Threads REQUIRED)
find_package(Boost 1.74 REQUIRED)                # header-only: Boost.Intrusive
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(GTest REQUIRED)
find_package(benchmark REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(FUSE3 REQUIRED IMPORTED_TARGET fuse3)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)

# CUDA: found automatically (CUDA 13 lives in /usr/local/cuda here). Without a
# toolkit the CUDA parts are skipped; everything else builds.
if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
  set(CUDAToolkit_ROOT /usr/local/cuda)
endif()
find_package(CUDAToolkit QUIET)
if(CUDAToolkit_FOUND)
  set(KVPAGER_HAVE_CUDA ON)
  message(STATUS "kvpager: CUDA toolkit ${CUDAToolkit_VERSION} at ${CUDAToolkit_BIN_DIR}: CUDA parts enabled")
else()
  set(KVPAGER_HAVE_CUDA OFF)
  message(STATUS "kvpager: no CUDA toolkit found: the CUDA parts (cuda/) are skipped")
endif()
