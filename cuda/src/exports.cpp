// What libkvpager.so exports: dlsym, the libcuda entry points it intercepts
// (for programs linked against libcuda directly), and the hint C API.
//
// dlsym. Since CUDA 11.3 the runtime (static or dynamic) finds the driver with
// dlopen("libcuda.so.1") + dlsym("cuGetProcAddress"), and every other entry
// point through cuGetProcAddress; other libraries (Triton) dlsym entry points
// directly. Our dlsym asks libc's (found with dlvsym: it is not overridden)
// and swaps a libcuda entry point we intercept for its wrapper. It takes no
// lock, allocates nothing and initialises nothing, so it is safe to call from
// any constructor, any thread, and re-entrantly. dlsym(RTLD_NEXT, ...) is
// resolved relative to its caller, which glibc finds from the return address:
// for that handle the stub below jumps to libc's dlsym with the caller's
// return address still in place, instead of calling it from here.
#include <dlfcn.h>

#include <cstring>
#include <string>

#include "api_table.h"
#include "driver.h"
#include "hooks.h"
#include "runtime.h"

#define KVP_API extern "C" __attribute__((visibility("default")))

namespace {
__attribute__((tls_model("initial-exec"))) thread_local int t_dlsym_depth = 0;
}  // namespace

extern "C" __attribute__((visibility("hidden"), used)) KVP_NO_SANITIZE void* kvp_real_dlsym_fn() {
  return kvpager::cuda::real_dlsym_function();
}

// (Not instrumented: sanitizer runtimes call dlsym while setting themselves up.)
extern "C" __attribute__((visibility("hidden"), used)) KVP_NO_SANITIZE void* kvp_dlsym_impl(void* handle,
                                                                                              const char* name) {
  void* p = kvpager::cuda::real_dlsym(handle, name);
  if (!p || !name || name[0] != 'c' || name[1] != 'u' || t_dlsym_depth > 0) return p;
  ++t_dlsym_depth;  // a dlsym from inside ours gets the plain answer
  p = kvpager::cuda::wrap_export(name, p);
  --t_dlsym_depth;
  return p;
}

#if defined(__x86_64__)
asm(R"(
  .pushsection .text
  .globl dlsym
  .type dlsym, @function
  .p2align 4
dlsym:
  cmpq $-1, %rdi            # RTLD_NEXT: libc must see our caller's return address
  je 1f
  jmp kvp_dlsym_impl
1:
  subq $8, %rsp
  pushq %rdi
  pushq %rsi
  call kvp_real_dlsym_fn
  popq %rsi
  popq %rdi
  addq $8, %rsp
  jmp *%rax
  .size dlsym, .-dlsym
  .popsection
)");
#define KVP_STUB(name, api, v)                                                                           \
  asm(".pushsection .text\n.globl " #name "\n.type " #name ", @function\n.p2align 4\n" #name           \
      ":\n\tjmp *kvp_x_" #name "(%rip)\n.size " #name ", .-" #name "\n.popsection\n");
#elif defined(__aarch64__)
asm(R"(
  .pushsection .text
  .globl dlsym
  .type dlsym, %function
  .p2align 4
dlsym:
  cmn x0, #1
  b.ne kvp_dlsym_impl
  stp x29, x30, [sp, #-32]!
  mov x29, sp
  stp x0, x1, [sp, #16]
  bl kvp_real_dlsym_fn
  mov x16, x0
  ldp x0, x1, [sp, #16]
  ldp x29, x30, [sp], #32
  br x16
  .size dlsym, .-dlsym
  .popsection
)");
#define KVP_STUB(name, api, v)                                                                           \
  asm(".pushsection .text\n.globl " #name "\n.type " #name ", %function\n.p2align 4\n" #name           \
      ":\n\tadrp x16, kvp_x_" #name "\n\tldr x16, [x16, :lo12:kvp_x_" #name "]\n\tbr x16\n.size " #name \
      ", .-" #name "\n.popsection\n");
#else
#error "libkvpager.so supports x86-64 and aarch64"
#endif

// cuMemAlloc_v2, cuLaunchKernel, cuLaunchKernel_ptsz, ...: each jumps to its wrapper.
KVP_EXPORTS(KVP_STUB)

// ---------------------------------------------------------------- the hint C API (kvpager.h)

namespace {
using kvpager::HintKind;
using kvpager::cuda::Runtime;

int hint(const char* name, HintKind kind) {
  Runtime* rt = Runtime::active();
  return rt ? rt->hint(name, kind) : kvpager::cuda::kHintNotFound;
}
}  // namespace

KVP_API int kvpager_hint_v1(int op, unsigned long long addr, unsigned long long size, const char* name) {
  switch (op) {
    case 0: {
      Runtime* rt = Runtime::active();
      return rt ? rt->tag(addr, size, name) : kvpager::cuda::kHintNotFound;
    }
    case 1: return hint(name, HintKind::kPrefetch);
    case 2: return hint(name, HintKind::kPark);
    case 3: return hint(name, HintKind::kDrop);
    case 4: return hint(name, HintKind::kPin);
    case 5: return hint(name, HintKind::kUnpin);
    case 6: {
      Runtime* rt = Runtime::active();
      return rt ? rt->publish(name) : kvpager::cuda::kHintNotFound;
    }
    default: return kvpager::cuda::kHintInvalid;
  }
}

KVP_API unsigned long long kvpager_stats_v1(char* buf, unsigned long long len) {
  Runtime* rt = Runtime::get();
  std::string text = rt ? rt->stats_text() : std::string("state=off\n");
  if (buf && len) {
    size_t n = std::min<size_t>(text.size(), len - 1);
    std::memcpy(buf, text.data(), n);
    buf[n] = '\0';
  }
  return text.size() + 1;
}
