// mmap(MAP_SHARED) of a descriptor, exposed to JS as a real
// SharedArrayBuffer over the mapped pages (no copy).
//
// V8 frees a SharedArrayBuffer's memory only when it is garbage-collected,
// possibly on another thread if the buffer was shared with a worker. So:
// - mappingUnmap() makes the *file* mapping go away now by mapping anonymous
//   zero pages over the range (MAP_FIXED, atomic); the file's last reference
//   is dropped immediately, while JS code still holding the buffer reads zeros
//   instead of crashing;
// - the backing store's deleter munmaps whatever is in the range at GC.
//
// The buffer is the mapping's only JS handle: mappingUnmap, mappingRevoked and
// mappingAddress take it and find the mapping's state by its address. A
// handle object with bound methods (a napi function and a finalizer each)
// cost more than the mmap itself, and every lease maps several times in the
// client and the simulator (issue 16).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "sigbus_guard.h"
#include "v8_interop.h"

#ifndef MAP_FIXED_NOREPLACE
#error "MAP_FIXED_NOREPLACE is needed (Linux 4.17 headers, glibc 2.28)"
#endif

namespace devlease {
namespace {

struct MappingState {
  void* address;
  size_t length;
  int prot;
  int guard_slot = -1;  // sigbus_guard slot while guarded
  bool file_unmapped = false;
  bool revoked = false;  // the guard's verdict, kept after unregistering
  std::mutex mutex;      // mappingUnmap() (a JS thread) vs the deleter (any thread)
};

// Every live mapping by its address, process-wide: a buffer may be shared with a worker, and its deleter runs
// on whichever thread collects it last. An entry lives exactly as long as its backing store, and a range stays
// mapped (by the file or by zero pages) until that deleter runs, so no two live entries share an address.
std::mutex registry_mutex;
std::unordered_map<void*, MappingState*>& Registry() {
  static auto* registry = new std::unordered_map<void*, MappingState*>();  // never destroyed: deleters may run late
  return *registry;
}

// Under s->mutex.
void StopGuarding(MappingState* s) {
  if (s->guard_slot < 0) return;
  s->revoked = sigbus_guard::Unregister(s->guard_slot) || s->revoked;
  s->guard_slot = -1;
}

void OnBackingStoreFreed(void*, size_t, void* data) {
  auto* s = static_cast<MappingState*>(data);
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = Registry().find(s->address);
    if (it != Registry().end() && it->second == s) Registry().erase(it);
  }
  {
    std::lock_guard<std::mutex> lock(s->mutex);
    StopGuarding(s);
    munmap(s->address, s->length);
  }
  delete s;
}

// The state of the mapping `arg` is the buffer of. The buffer being an argument keeps its backing store, and
// so the state, alive for the call.
MappingState* MappingOf(Napi::Env env, Napi::Value arg) {
  v8::Local<v8::Value> value = ToV8(arg);
  if (value->IsSharedArrayBuffer()) {
    void* data = value.As<v8::SharedArrayBuffer>()->Data();
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = Registry().find(data);
    if (it != Registry().end() && it->second->length == value.As<v8::SharedArrayBuffer>()->ByteLength()) {
      return it->second;
    }
  }
  ThrowInvalidArg(env, "buffer must be a SharedArrayBuffer made by mmap()");
}

MappingState* MappingArg(const Napi::CallbackInfo& info) { return MappingOf(info.Env(), info[0]); }

// mappingUnmap(buffer): replace the file mapping with zero pages now (idempotent).
Napi::Value MappingUnmap(const Napi::CallbackInfo& info) {
  MappingState* s = MappingArg(info);
  std::lock_guard<std::mutex> lock(s->mutex);
  if (s->file_unmapped) return info.Env().Undefined();
  // The guard stops once the zero pages are in: a failed mmap leaves the file mapping, still guarded.
  void* r = mmap(s->address, s->length, s->prot, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (r == MAP_FAILED) ThrowErrno(info.Env(), "mmap", errno);
  StopGuarding(s);
  s->file_unmapped = true;
  return info.Env().Undefined();
}

// mappingUnmapMany(buffers) -> the mmap calls made: mappingUnmap() of each, with one mmap over each run of adjacent
// ranges of the same protection instead of one per mapping. Each mmap over a mapped range flushes the TLB of every
// other CPU that runs this process, by an interrupt: the simulator releasing a reclaimed lease's 64 maps, with its
// device thread running on the other CPU, paid 64 of them before it could answer the unmap (0.2-3 ms; issue 16).
// The simulator places a lease's maps next to each other (mmap with `at`: src/sim/host/dma-placement.ts), so they
// are one run even when leases map at the same time (left to the kernel, they interleave). On an
// mmap failure the rest are still done; the first errno is thrown at the end, and the run that failed stays
// file-mapped and guarded (as mappingUnmap leaves a mapping it could not replace).
Napi::Value MappingUnmapMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) ThrowInvalidArg(env, "buffers must be an array");
  auto buffers = info[0].As<Napi::Array>();
  std::vector<MappingState*> states;
  states.reserve(buffers.Length());
  for (uint32_t i = 0; i < buffers.Length(); i++) states.push_back(MappingOf(env, buffers.Get(i)));
  std::sort(states.begin(), states.end(), [](MappingState* a, MappingState* b) {
    return reinterpret_cast<uintptr_t>(a->address) < reinterpret_cast<uintptr_t>(b->address);
  });
  states.erase(std::unique(states.begin(), states.end()), states.end());
  // In address order, each once: the deleters (any thread) take one state's mutex at a time, so no deadlock.
  std::vector<std::unique_lock<std::mutex>> locks;
  locks.reserve(states.size());
  for (MappingState* s : states) locks.emplace_back(s->mutex);
  int first_error = 0;
  int calls = 0;
  size_t i = 0;
  while (i < states.size()) {
    MappingState* head = states[i];
    if (head->file_unmapped) {
      i++;
      continue;
    }
    auto* end = static_cast<char*>(head->address) + head->length;
    size_t j = i + 1;
    while (j < states.size() && states[j]->address == end && states[j]->prot == head->prot &&
           !states[j]->file_unmapped) {
      end += states[j]->length;
      j++;
    }
    size_t span = static_cast<size_t>(end - static_cast<char*>(head->address));
    void* r = mmap(head->address, span, head->prot, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    calls++;
    if (r == MAP_FAILED) {
      if (first_error == 0) first_error = errno;
    } else {
      for (size_t k = i; k < j; k++) {
        StopGuarding(states[k]);  // after the zero pages are in, as mappingUnmap
        states[k]->file_unmapped = true;
      }
    }
    i = j;
  }
  locks.clear();
  if (first_error != 0) ThrowErrno(env, "mmap", first_error);
  return Napi::Number::New(env, calls);
}

// mappingRevoked(buffer): whether the SIGBUS guard replaced the mapping with zero pages.
Napi::Value MappingRevoked(const Napi::CallbackInfo& info) {
  MappingState* s = MappingArg(info);
  std::lock_guard<std::mutex> lock(s->mutex);
  bool revoked = s->guard_slot >= 0 ? sigbus_guard::IsRevoked(s->guard_slot) : s->revoked;
  return Napi::Boolean::New(info.Env(), revoked);
}

// mappingAddress(buffer): where the mapping is in this process, as a bigint.
Napi::Value MappingAddress(const Napi::CallbackInfo& info) {
  MappingState* s = MappingArg(info);
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(s->address)));
}

// guardRevocations(): how many guarded mappings were revoked so far, process-wide (a double: exact to 2^53).
Napi::Value GuardRevocations(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sigbus_guard::Revocations()));
}

// guardRevocationsWord(): the revocation counter as a Uint32Array of 2 (low word first) over the counter's own
// memory, so a hot loop reads it with one load instead of a call (~100 ns a call on the simulator's hot path).
// The memory is static: the external buffer has no finalizer to run.
Napi::Value GuardRevocationsWord(const Napi::CallbackInfo& info) {
  void* word = const_cast<uint64_t*>(sigbus_guard::RevocationsWord());
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(info.Env(), word, sizeof(uint64_t));
  return Napi::Uint32Array::New(info.Env(), 2, buf, 0);
}

// guardSlots(): { capacity, inUse } of the process's SIGBUS guard table (every guarded mmap takes a slot).
Napi::Value GuardSlots(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("capacity", Napi::Number::New(info.Env(), sigbus_guard::Capacity()));
  out.Set("inUse", Napi::Number::New(info.Env(), sigbus_guard::InUse()));
  return out;
}

// guardRevokedAt(address): whether the guarded mapping starting at `address` (a bigint) was revoked.
Napi::Value GuardRevokedAt(const Napi::CallbackInfo& info) {
  bool lossless = false;
  uint64_t address = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
  return Napi::Boolean::New(info.Env(), sigbus_guard::IsRevokedAt(static_cast<uintptr_t>(address)));
}

// guardReplaceAt(address, length, fd): map fd over the guarded mapping at `address` (a bigint) in one step
// (sigbus_guard::ReplaceAt), for a thread that does not hold the mapping's handle (the simulator's front end
// renewing a queue page the device worker maps).
Napi::Value GuardReplaceAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBigInt()) ThrowMisuse(env, "ERR_DEVLEASE_INVALID_ARG", "address must be a bigint");
  bool lossless = false;
  uint64_t address = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
  auto length = static_cast<size_t>(IntArg(info, 1, "length", 1, int64_t{1} << 40));
  int fd = FdArg(info, 2);
  int err = sigbus_guard::ReplaceAt(static_cast<uintptr_t>(address), length, fd);
  if (err != 0) ThrowErrno(env, "mmap", err);
  return env.Undefined();
}

// mmap(fd, length, prot, offset, guard[, at]): with `at` (a bigint, page-aligned) the mapping goes exactly
// there or nowhere: MAP_FIXED_NOREPLACE fails with EEXIST over any existing mapping, so no range another
// handle owns (a live buffer, its zero pages awaiting their deleter) is ever replaced. A kernel older than
// 4.17 takes the flag's address as a hint: the mapping is valid wherever it went (mappingAddress says where).
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  auto length = static_cast<size_t>(IntArg(info, 1, "length", 1, int64_t{1} << 40));
  int prot = static_cast<int>(IntArg(info, 2, "prot", 0, PROT_READ | PROT_WRITE));
  int64_t offset = IntArg(info, 3, "offset", 0, (int64_t{1} << 53) - 1);
  bool guard = BoolArg(info, 4, "guard");
  void* at = nullptr;
  int flags = MAP_SHARED;
  if (info.Length() > 5 && !info[5].IsUndefined()) {
    if (!info[5].IsBigInt()) ThrowInvalidArg(env, "at must be a bigint");
    bool lossless = false;
    uint64_t a = info[5].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless || a == 0 || a % static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) != 0)
      ThrowInvalidArg(env, "at must be a nonzero page-aligned address");
    at = reinterpret_cast<void*>(static_cast<uintptr_t>(a));
    flags |= MAP_FIXED_NOREPLACE;
  }
  if (guard) {
    int err = sigbus_guard::Install();
    if (err != 0) ThrowErrno(env, "sigaction", err);
  }

  void* address = mmap(at, length, prot, flags, fd, offset);
  if (address == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  auto* s = new MappingState{address, length, prot};
  if (guard) {
    s->guard_slot = sigbus_guard::Register(address, length, prot);
    if (s->guard_slot < 0) {
      munmap(address, length);
      delete s;
      ThrowMisuse(env, "ERR_DEVLEASE_GUARD_TABLE_FULL", "too many guarded mappings in this process");
    }
  }

  // From here on the backing store's deleter owns the range and the state.
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    // A live entry at this address would mean a range was munmapped before its buffer's deleter ran.
    if (!Registry().emplace(address, s).second) {
      Napi::Error::Fatal("devlease mmap", "a mapping is already registered at the address mmap returned");
    }
  }
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::shared_ptr<v8::BackingStore> store =
      v8::SharedArrayBuffer::NewBackingStore(address, length, OnBackingStoreFreed, s);
  return Napi::Value(env, ToNapi(v8::SharedArrayBuffer::New(isolate, std::move(store))));
}

// findFreeRange(length): the start (a bigint) of `length` bytes of address space free right now: reserved
// (PROT_NONE, no memory) and released at once, for a caller that then places mappings there with `at`.
Napi::Value FindFreeRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto length = static_cast<size_t>(IntArg(info, 0, "length", 1, int64_t{1} << 46));
  void* p = mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) ThrowErrno(env, "mmap", errno);
  munmap(p, length);
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

}  // namespace

void RegisterMapping(Napi::Env env, Napi::Object exports) {
  exports.Set("findFreeRange", Napi::Function::New(env, FindFreeRange, "findFreeRange"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("mappingUnmap", Napi::Function::New(env, MappingUnmap, "mappingUnmap"));
  exports.Set("mappingUnmapMany", Napi::Function::New(env, MappingUnmapMany, "mappingUnmapMany"));
  exports.Set("mappingRevoked", Napi::Function::New(env, MappingRevoked, "mappingRevoked"));
  exports.Set("mappingAddress", Napi::Function::New(env, MappingAddress, "mappingAddress"));
  exports.Set("guardRevocations", Napi::Function::New(env, GuardRevocations, "guardRevocations"));
  exports.Set("guardRevocationsWord", Napi::Function::New(env, GuardRevocationsWord, "guardRevocationsWord"));
  exports.Set("guardSlots", Napi::Function::New(env, GuardSlots, "guardSlots"));
  exports.Set("guardRevokedAt", Napi::Function::New(env, GuardRevokedAt, "guardRevokedAt"));
  exports.Set("guardReplaceAt", Napi::Function::New(env, GuardReplaceAt, "guardReplaceAt"));
}

}  // namespace devlease
