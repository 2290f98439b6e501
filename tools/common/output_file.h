// Writing a file the user named (`kvpager store get NAME FILE`, `replay
// --plot FILE`, ...) without ever touching a file that is not ours.
//
// What FILE may be, and what happens:
//   "-", /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N
//                      written to that descriptor directly (a stream)
//   a symbolic link    resolved (a dangling one too); its target is FILE
//   absent, or a regular file
//                      written to a temporary file created exclusively
//                      (O_EXCL: never follows a link, never reuses a name) in
//                      FILE's directory, flushed and renamed onto FILE by
//                      commit(): FILE is the old bytes or the new ones, never
//                      a mix. An existing FILE keeps its permission bits.
//                      Without commit() (a failure) the temporary is removed;
//                      nothing else is.
//   a character device, FIFO or socket
//                      opened and written directly, never replaced
//                      (/dev/null stays /dev/null)
//   a directory        refused
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace kvpager::tools {

class OutputFile {
 public:
  OutputFile() = default;
  ~OutputFile();  // without commit(): discards what was written (removes the temporary)
  OutputFile(OutputFile&& o) noexcept;
  OutputFile& operator=(OutputFile&& o) noexcept;
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Opens FILE as above. false with *error ("cannot create DIR/...: why").
  bool open(const std::string& path, std::string* error);
  // All of `bytes`, or false with errno set.
  bool write(std::span<const std::byte> bytes);
  bool write(std::string_view text) { return write(std::as_bytes(std::span(text.data(), text.size()))); }
  // Makes the output final (flush + rename for a replaced file). false with
  // *error; the temporary is gone then and FILE is as it was.
  bool commit(std::string* error);
  // Throws the bytes away (also what the destructor does without commit()).
  void discard();

  // True when the output is a stream (stdout, a device, a FIFO): what was
  // written before a failure has reached it and cannot be taken back.
  bool direct() const { return direct_; }
  // True when FILE named a descriptor of ours ("-", /dev/stdout, /dev/fd/N).
  bool descriptor() const { return direct_ && !own_fd_ && fd_ >= 0; }
  // The file written in the end (a symlink's target; the path for a stream).
  const std::string& target() const { return target_; }

 private:
  int fd_ = -1;
  bool own_fd_ = false;  // close it (not a descriptor we were handed)
  bool direct_ = false;
  bool replacing_ = false;  // an existing regular file: flushed before the rename
  std::string target_;  // what the temporary becomes
  std::string temp_;    // the temporary's name ("" once renamed or removed)
};

}  // namespace kvpager::tools
