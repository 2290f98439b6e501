// tools/common/output_file.h: writing a file the user named never touches
// a file that is not ours. Each case sets up what a user may have lying
// around (a stale "partial" file, a symlink, a FIFO, a device) and checks
// that only FILE changes, and only when the output is whole.
#include "common/output_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "temp_dir.h"

namespace {

namespace fsys = std::filesystem;
using kvpager::testing::TempDir;
using kvpager::tools::OutputFile;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::set<std::string> names(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fsys::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// Opens, writes, commits; "" or the error.
std::string write_whole(const std::string& path, const std::string& text) {
  OutputFile out;
  std::string err;
  if (!out.open(path, &err)) return err;
  if (!out.write(text)) return "write failed";
  if (!out.commit(&err)) return err;
  return "";
}

TEST(OutputFile, ANewFileAppearsOnlyWhenCommittedAndADiscardLeavesNothing) {
  TempDir d;
  const std::string f = d.path() + "/out";
  {
    OutputFile out;
    std::string err;
    ASSERT_TRUE(out.open(f, &err)) << err;
    ASSERT_TRUE(out.write(std::string_view("half")));
    EXPECT_FALSE(fsys::exists(f)) << "FILE appears only once whole";
  }  // destroyed without commit: a failure
  EXPECT_TRUE(names(d.path()).empty()) << "the temporary is removed, nothing else is left";
  ASSERT_EQ(write_whole(f, "whole"), "");
  EXPECT_EQ(slurp(f), "whole");
  EXPECT_EQ(names(d.path()), std::set<std::string>{"out"});
}

TEST(OutputFile, AFailedWriteKeepsTheOldFileAndItsNeighbours) {
  TempDir d;
  const std::string f = d.path() + "/o";
  spit(f, "old bytes");
  chmod(f.c_str(), 0640);
  // What the old implementation used as its temporary, a user's file here.
  spit(f + ".kvpager-partial", "important");
  {
    OutputFile out;
    std::string err;
    ASSERT_TRUE(out.open(f, &err)) << err;
    ASSERT_TRUE(out.write(std::string_view("new but unfinished")));
    out.discard();
  }
  EXPECT_EQ(slurp(f), "old bytes");
  EXPECT_EQ(slurp(f + ".kvpager-partial"), "important");
  EXPECT_EQ(names(d.path()), (std::set<std::string>{"o", "o.kvpager-partial"}));
  ASSERT_EQ(write_whole(f, "new"), "");
  EXPECT_EQ(slurp(f), "new");
  EXPECT_EQ(slurp(f + ".kvpager-partial"), "important");
  struct stat st{};
  ASSERT_EQ(stat(f.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u) << "the replacement keeps the permissions";
}

TEST(OutputFile, ASymlinkIsFollowedToItsTargetAndStaysALink) {
  TempDir d;
  const std::string target = d.path() + "/target", link = d.path() + "/link";
  spit(target, "old");
  ASSERT_EQ(symlink("target", link.c_str()), 0);
  ASSERT_EQ(write_whole(link, "new"), "");
  EXPECT_TRUE(fsys::is_symlink(link));
  EXPECT_EQ(slurp(target), "new");
  // A dangling link: its target is created.
  const std::string dangling = d.path() + "/dangling";
  ASSERT_EQ(symlink("sub/made", dangling.c_str()), 0);
  fsys::create_directory(d.path() + "/sub");
  ASSERT_EQ(write_whole(dangling, "made"), "");
  EXPECT_TRUE(fsys::is_symlink(dangling));
  EXPECT_EQ(slurp(d.path() + "/sub/made"), "made");
  EXPECT_EQ(names(d.path() + "/sub"), std::set<std::string>{"made"});
  // A loop is an error, not a hang.
  const std::string loop = d.path() + "/loop";
  ASSERT_EQ(symlink("loop", loop.c_str()), 0);
  EXPECT_NE(write_whole(loop, "x"), "");
  EXPECT_TRUE(fsys::is_symlink(loop));
}

TEST(OutputFile, AFifoIsWrittenIntoNotReplaced) {
  TempDir d;
  const std::string fifo = d.path() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] { got = slurp(fifo); });
  EXPECT_EQ(write_whole(fifo, "through the pipe"), "");
  reader.join();
  EXPECT_EQ(got, "through the pipe");
  struct stat st{};
  ASSERT_EQ(lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(names(d.path()), std::set<std::string>{"fifo"});
}

TEST(OutputFile, ADeviceIsWrittenIntoNotReplaced) {
  TempDir d;
  // A null device of our own where we may make one (root), else /dev/null.
  std::string dev = d.path() + "/null";
  if (mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) dev = "/dev/null";
  OutputFile out;
  std::string err;
  ASSERT_TRUE(out.open(dev, &err)) << err;
  EXPECT_TRUE(out.direct());
  ASSERT_TRUE(out.write(std::string_view("gone")));
  ASSERT_TRUE(out.commit(&err)) << err;
  struct stat st{};
  ASSERT_EQ(lstat(dev.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << dev << " is still a device";
  if (dev != "/dev/null") {
    EXPECT_EQ(names(d.path()), std::set<std::string>{"null"});
  }
  // /dev/full: the write fails, and says so.
  OutputFile full;
  ASSERT_TRUE(full.open("/dev/full", &err)) << err;
  EXPECT_FALSE(full.write(std::string_view("x")));
}

TEST(OutputFile, StdoutNamesAreTheDescriptorAndADirectoryIsRefused) {
  TempDir d;
  for (const char* name : {"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"}) {
    OutputFile out;
    std::string err;
    ASSERT_TRUE(out.open(name, &err)) << name << ": " << err;
    EXPECT_TRUE(out.direct()) << name;
  }
  OutputFile out;
  std::string err;
  EXPECT_FALSE(out.open("/dev/fd/987", &err));
  EXPECT_NE(err.find("not open"), std::string::npos) << err;
  EXPECT_FALSE(out.open(d.path(), &err));
  EXPECT_NE(err.find("is a directory"), std::string::npos) << err;
  EXPECT_FALSE(out.open(d.path() + "/no/such/dir/file", &err));
  EXPECT_NE(err.find("cannot create"), std::string::npos) << err;
}

}  // namespace
