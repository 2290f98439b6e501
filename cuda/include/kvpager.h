/* kvpager.h: hints from a CUDA program (an inference engine adapter) to the
 * kvpager pager preloaded into it (LD_PRELOAD=libkvpager.so, or kvpager run).
 *
 * Header only, C and C++. When libkvpager.so is not loaded every call is a
 * no-op returning KVPAGER_NOT_LOADED, so an engine can call these
 * unconditionally. No linking needed: the entry point is looked up once with
 * dlsym(RTLD_DEFAULT) (glibc 2.34+ has dlsym in libc; older ones need -ldl).
 *
 * Contexts. By default every large allocation is a context of its own. An
 * engine whose KV cache is one big pool tags the pool's ranges with its own
 * names (a conversation, a session, a prefix), then:
 *   prefetch  its next turn is coming: stage it into GPU memory ahead of use;
 *   park      idle for a while: move it out of GPU memory, let it spill to
 *             the NVMe store. A parked context is promised not to be read by
 *             kernels until it is prefetched again, unless a kernel argument
 *             points right into it (then it is restored before the launch);
 *   drop      its bytes are no longer needed anywhere;
 *   pin/unpin keep it where it is / release that (pinned contexts may hold
 *             at most low_watermark of the HBM budget, so that every other
 *             access finds room: a pin past it, or a tag that adds a range
 *             to a pinned context past it, answers KVPAGER_NO_ROOM; a
 *             pinned context answers park and drop with KVPAGER_BUSY);
 *   publish   write its current bytes into the token store under its name
 *             (below).
 *
 * Tagging cuts at chunk boundaries (2 MiB by default, `chunk_size`): the
 * chunks entirely inside [addr, addr + size) join the context (the end of the
 * allocation counts as a boundary). Tag a range before parking it: a range
 * with chunks already copied to the store answers KVPAGER_BUSY.
 */
#ifndef KVPAGER_H
#define KVPAGER_H

#include <dlfcn.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  KVPAGER_OK = 0,
  KVPAGER_NOT_LOADED = 1, /* libkvpager.so is not in this process (or its pager is off) */
  KVPAGER_INVALID = 2,    /* bad argument: no name, a range outside one allocation or under a chunk */
  KVPAGER_NOT_FOUND = 3,  /* no such context, or the pager has not started (no managed allocation yet) */
  KVPAGER_BUSY = 4,       /* pinned, or already copied to the store under another name */
  KVPAGER_ERROR = 5,
  KVPAGER_NO_ROOM = 6     /* pin or tag: pinned contexts would hold more than low_watermark of the HBM budget */
};

typedef int (*kvpager_hint_fn)(int op, unsigned long long addr, unsigned long long size, const char* name);

static inline kvpager_hint_fn kvpager__hint_entry(void) {
  static kvpager_hint_fn fn;
  static int looked;
  if (!looked) {
    union {
      void* p;
      kvpager_hint_fn f;
    } u;
    u.p = dlsym(RTLD_DEFAULT, "kvpager_hint_v1");
    fn = u.f;
    looked = 1;
  }
  return fn;
}

static inline int kvpager__hint(int op, unsigned long long addr, unsigned long long size, const char* name) {
  kvpager_hint_fn fn = kvpager__hint_entry();
  int r = fn ? fn(op, addr, size, name) : KVPAGER_NOT_LOADED;
  return r == KVPAGER_NOT_FOUND && !fn ? KVPAGER_NOT_LOADED : r;
}

/* Whether libkvpager.so is loaded in this process. */
static inline int kvpager_loaded(void) { return kvpager__hint_entry() != 0; }

/* [dptr, dptr + size) of one device allocation becomes (part of) context `name`. */
static inline int kvpager_tag_context(unsigned long long dptr, unsigned long long size, const char* name) {
  return kvpager__hint(0, dptr, size, name);
}
static inline int kvpager_prefetch_context(const char* name) { return kvpager__hint(1, 0, 0, name); }
static inline int kvpager_park_context(const char* name) { return kvpager__hint(2, 0, 0, name); }
static inline int kvpager_drop_context(const char* name) { return kvpager__hint(3, 0, 0, name); }
static inline int kvpager_pin_context(const char* name) { return kvpager__hint(4, 0, 0, name); }
static inline int kvpager_unpin_context(const char* name) { return kvpager__hint(5, 0, 0, name); }

/* Publishes context `name`: its current bytes -- read where they rest, in
 * GPU memory, host RAM or the NVMe store, without moving anything -- become a
 * context of the same name in the token store (store_dir, KVPAGER_STORE_DIR;
 * the default namespace), a new generation that replaces an older
 * publication of the name, visible only once complete. Its manifest names
 * this process as owner; it outlives the process, and `kvpager store ls` and
 * kvpager-fs show it. The same as `kvpager hint publish NAME`.
 * Blocks until the publication is committed or has failed (a large context
 * takes a while). Work the program queued on its streams before the call is
 * waited for; the bytes are a snapshot, so publish a context the program is
 * not writing meanwhile (e.g. after kvpager_park_context).
 * Returns KVPAGER_OK (committed), KVPAGER_NOT_FOUND (no such context, or the
 * pager has not started), KVPAGER_INVALID (no name), KVPAGER_BUSY (the
 * program's streams did not go quiet within a second: try again),
 * KVPAGER_ERROR (the store refused it -- full, an I/O error, a spilled chunk
 * unreadable -- or there is no store; nothing became visible, an older
 * publication stays; the reason is on stderr), KVPAGER_NOT_LOADED. */
static inline int kvpager_publish_context(const char* name) { return kvpager__hint(6, 0, 0, name); }

/* The pager's state as "key=value" lines (regions, bytes per tier, moves,
 * restores, contexts...) into buf, cut to len; returns the full length + 1.
 * 0 when libkvpager.so is not loaded. */
static inline unsigned long long kvpager_stats(char* buf, unsigned long long len) {
  union {
    void* p;
    unsigned long long (*f)(char*, unsigned long long);
  } u;
  u.p = dlsym(RTLD_DEFAULT, "kvpager_stats_v1");
  return u.f ? u.f(buf, len) : 0;
}

#ifdef __cplusplus
}
#endif

#endif /* KVPAGER_H */
