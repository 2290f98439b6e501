// TokenStore::fsck: every manifest and every object checked, references
// cross-checked; repair removes what cannot be served.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <unordered_set>

#include "fs_util.h"
#include "kvpager/store/token_store.h"

namespace kvpager::store {

namespace {

// d_type, or lstat's where the file system does not fill it in; DT_UNKNOWN
// for an entry gone meanwhile.
unsigned char entry_type(int dirfd, const char* name, unsigned char type) {
  if (type != DT_UNKNOWN) return type;
  struct stat st{};
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return DT_UNKNOWN;
  return static_cast<unsigned char>(IFTODT(st.st_mode));
}

const char* type_name(unsigned char type) {
  switch (type) {
    case DT_DIR: return "a directory";
    case DT_REG: return "a file";
    case DT_LNK: return "a symbolic link";
    default: return "a special file";
  }
}

// objects/<hh>: two lowercase hex digits, as object_path() names them.
bool object_dir_name(std::string_view n) {
  return n.size() == 2 && std::all_of(n.begin(), n.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

FsckReport TokenStore::fsck(bool repair, const std::function<void(uint64_t, uint64_t)>& progress) {
  FsckReport r;
  repair = repair && !opt_.read_only;
  const uint64_t now = wall_ns();
  auto problem = [&](std::string line) { r.problems.push_back(std::move(line)); };
  auto remove = [&](int dirfd, const std::string& path) {
    if (unlinkat(dirfd, path.c_str(), 0) == 0) ++r.removed;
  };
  // What a file takes, for the totals (0 if it is gone meanwhile).
  auto size_at = [](int dirfd, const char* name) -> uint64_t {
    struct stat st{};
    return fstatat(dirfd, name, &st, 0) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  };
  // Not the store's: never removed (it may be anything, a directory tree
  // included), named so that a person can.
  auto foreign = [&](const std::string& path, unsigned char type) {
    ++r.foreign_entries;
    r.left_alone.push_back(
        fmt::format("{}: {} the store did not make: left alone; remove it by hand", path, type_name(type)));
  };

  // Writers that died without anyone cleaning up after them (only possible
  // for a read-only handle, or if one died since this handle opened).
  std::unordered_set<ObjectKey, ObjectKeyHash> protect;
  std::vector<std::pair<std::string, int>> dead;
  walk_writers(now, &protect, &dead, repair);
  for (auto& [id, fd] : dead) {
    ++r.leftovers;
    problem(fmt::format("writers/{}: leftovers of a dead writer", id));
    if (repair) {
      const uint64_t before = st_.leftovers_removed;
      refresh_contexts();
      cleanup_dead_writer(id, fd);
      r.removed += st_.leftovers_removed - before;
    } else {
      close(fd);
    }
  }

  // Manifests.
  std::vector<std::string> files;
  for_each_entry(contexts_fd_, ".", [&](const char* n, unsigned char type) {
    type = entry_type(contexts_fd_, n, type);
    if (type == DT_UNKNOWN) return;
    if (type == DT_REG) files.emplace_back(n);
    else foreign(fmt::format("contexts/{}", n), type);
  });
  std::sort(files.begin(), files.end());
  struct Good {
    std::string file;
    Manifest m;
  };
  std::vector<Good> good;
  for (const std::string& f : files) {
    ++r.manifests_checked;
    std::vector<std::byte> bytes;
    if (!read_file_at(contexts_fd_, f.c_str(), &bytes)) {
      problem(fmt::format("contexts/{}: unreadable: {}", f, std::strerror(errno)));
      ++r.bad_manifests;
      continue;
    }
    std::string why;
    auto m = parse_manifest(bytes, &why);
    if (m && (!f.ends_with(".m") || key_hex(context_id(m->meta.ns, m->meta.name)) + ".m" != f)) {
      m.reset();
      why = "it names another context";
    }
    if (!m) {
      ++r.bad_manifests;
      problem(fmt::format("contexts/{}: bad manifest: {}", f, why));
      if (repair) remove(contexts_fd_, f);
      continue;
    }
    good.push_back(Good{f, std::move(*m)});
  }

  // Objects: every file under objects/ read whole and verified.
  std::vector<std::pair<ObjectKey, std::string>> objects;  // key, path
  // Only files in objects/<hh>/ are the store's; a misnamed one there is a
  // bad object, anything else is foreign.
  for_each_entry(objects_fd_, ".", [&](const char* sub, unsigned char type) {
    type = entry_type(objects_fd_, sub, type);
    if (type == DT_UNKNOWN) return;
    if (type != DT_DIR || !object_dir_name(sub)) return foreign(fmt::format("objects/{}", sub), type);
    int dfd = openat(objects_fd_, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) return;
    for_each_entry(dfd, ".", [&](const char* n, unsigned char t) {
      const std::string path = std::string(sub) + "/" + n;
      t = entry_type(dfd, n, t);
      if (t == DT_UNKNOWN) return;
      if (t != DT_REG) return foreign("objects/" + path, t);
      auto key = parse_key_hex(n);
      if (!key || object_path(*key) != path) {
        ++r.objects_checked;
        r.bytes_checked += size_at(dfd, n);
        problem(fmt::format("objects/{}: not an object name", path));
        ++r.bad_objects;
        if (repair) remove(objects_fd_, path);
        return;
      }
      objects.emplace_back(*key, path);
    });
    close(dfd);
  });
  struct Seen {
    bool good = false;
    uint64_t bytes = 0, checksum = 0;
  };
  std::unordered_map<ObjectKey, Seen, ObjectKeyHash> seen;
  read_pipelined(
      objects.size(),
      [&](size_t i) { return ReadSpec{objects[i].first, UINT64_MAX, std::nullopt, true}; },
      [&](size_t i, Status s, std::span<const std::byte>, const ObjectHeader& h) {
        ++r.objects_checked;
        Seen& e = seen[objects[i].first];
        if (ok(s)) {
          e = Seen{true, h.payload_bytes, h.checksum};
          r.bytes_checked += h.payload_bytes;
        } else if (s != Status::kNotFound) {  // gone meanwhile: not a problem
          r.bytes_checked += h.payload_bytes ? h.payload_bytes : size_at(objects_fd_, objects[i].second.c_str());
          ++r.bad_objects;
          problem(fmt::format("objects/{}: {}", objects[i].second, to_string(s)));
          if (repair) remove(objects_fd_, objects[i].second);
        }
        if (progress) progress(i + 1, objects.size());
        return Status::kOk;
      });

  // References: a context is served only if every chunk is there and matches.
  std::unordered_map<ObjectKey, uint32_t, ObjectKeyHash> refs;
  std::vector<const Good*> broken;
  for (const Good& g : good) {
    bool whole = true;
    for (size_t i = 0; i < g.m.chunks.size(); ++i) {
      const ManifestChunk& c = g.m.chunks[i];
      auto it = seen.find(c.key);
      const char* what = nullptr;
      if (it == seen.end()) {
        what = "missing";
        ++r.missing_objects;
      } else if (!it->second.good) {
        what = "corrupt";
      } else if (it->second.bytes != c.bytes || it->second.checksum != c.checksum) {
        what = "does not match the manifest";
      }
      if (what) {
        whole = false;
        problem(fmt::format("context '{}'{}: chunk {} ({}) {}", g.m.meta.name,
                            g.m.meta.ns.empty() ? "" : fmt::format(" (namespace '{}')", g.m.meta.ns), i,
                            key_hex(c.key), what));
      }
    }
    if (whole) {
      for (const ManifestChunk& c : g.m.chunks) ++refs[c.key];
    } else {
      broken.push_back(&g);
    }
  }
  if (repair) {
    for (const Good* g : broken) {
      remove(contexts_fd_, g->file);
      for (const ManifestChunk& c : g->m.chunks) {
        if (!refs.count(c.key) && !protect.count(c.key)) remove(objects_fd_, object_path(c.key));
        refs[c.key] += 0;  // each key once
      }
    }
  }
  // Orphans: objects nothing names and no live writer is publishing.
  for (const auto& [key, path] : objects) {
    auto it = seen.find(key);
    if (it == seen.end() || !it->second.good || refs.count(key) || protect.count(key)) continue;
    if (std::any_of(broken.begin(), broken.end(), [&](const Good* g) {
          return std::any_of(g->m.chunks.begin(), g->m.chunks.end(), [&](const ManifestChunk& c) { return c.key == key; });
        }))
      continue;  // reported with its context
    struct stat st{};
    if (fstatat(objects_fd_, path.c_str(), &st, 0) != 0) continue;  // gone meanwhile
    const uint64_t removable_ns = mtime_ns(st) + opt_.orphan_grace_ns;
    if (removable_ns > now) {
      // Possibly a live writer's publication in progress: a repair now could
      // break it. The grace tells a finished one from an abandoned one.
      ++r.young_orphans;
      r.young_until_ns = std::max(r.young_until_ns, removable_ns);
      r.left_alone.push_back(fmt::format("objects/{}: named by no context, but younger than the orphan grace "
                                         "(a writer may be publishing it): removable in {}s",
                                         path, (removable_ns - now + 999'999'999) / 1'000'000'000));
      continue;
    }
    ++r.orphan_objects;
    problem(fmt::format("objects/{}: named by no context", path));
    if (repair) remove(objects_fd_, path);
  }
  if (repair && r.removed > 0) {
    // What this handle knows is stale now: start from the disk again.
    contexts_.clear();
    shared_.clear();
    refresh_contexts();
    bytes_freed();
  }
  return r;
}

}  // namespace kvpager::store
