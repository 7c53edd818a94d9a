#include "sigbus_guard.h"

#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>

namespace devlease::sigbus_guard {
namespace {

// The table's size is what bounds the guarded mappings one process holds (the simulator advertises its
// max_dma_maps from it: sim/host/dma-limit.ts); Capacity() tells the TypeScript side.
constexpr int kSlots = 4096;
enum SlotState : int { kFree = 0, kBusy = 1, kActive = 2 };

// Process-wide on purpose: signal dispositions are per process. Only plain
// atomics, so the handler can read it at any moment.
struct Slot {
  std::atomic<int> state{kFree};
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> length{0};
  std::atomic<int> prot{0};
  std::atomic<bool> revoked{false};
};
static_assert(std::atomic<uintptr_t>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

Slot slots[kSlots];
// Slots not free (busy or active): what Register has handed out and Unregister not yet taken back.
std::atomic<int> in_use{0};
// Revocations ever made: a reader that saw the same count before and after an
// access knows no guarded mapping was revoked in between (one load, no lock).
std::atomic<uint64_t> revocations{0};
static_assert(std::atomic<uint64_t>::is_always_lock_free);
struct sigaction previous;
std::once_flag install_once;
int install_error = 0;

// Replaces the guarded mapping containing `address`; false if none does.
bool Revoke(uintptr_t address) {
  for (Slot& slot : slots) {
    if (slot.state.load(std::memory_order_acquire) != kActive) continue;
    uintptr_t start = slot.start.load(std::memory_order_relaxed);
    size_t length = slot.length.load(std::memory_order_relaxed);
    if (address < start || address - start >= length) continue;
    void* r = mmap(reinterpret_cast<void*>(start), length, slot.prot.load(std::memory_order_relaxed),
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) return false;
    slot.revoked.store(true, std::memory_order_release);
    revocations.fetch_add(1, std::memory_order_release);
    return true;
  }
  return false;
}

// Not SA_NODEFER: SIGBUS stays blocked while we run, so a re-raise below is
// delivered only after we return, with the default disposition in place.
void OnSigbus(int sig, siginfo_t* info, void* context) {
  int saved_errno = errno;
  bool from_fault = info != nullptr && info->si_code > 0;  // kernel-generated, not kill()/sigqueue()
  if (from_fault && Revoke(reinterpret_cast<uintptr_t>(info->si_addr))) {
    errno = saved_errno;
    return;  // the faulting access is retried and now reads zero
  }
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(sig, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
  } else if (previous.sa_handler == SIG_DFL || from_fault) {
    // Die of SIGBUS as if we had never been installed: a real fault simply
    // repeats on return; a sent signal is sent again.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, nullptr);
    if (!from_fault) raise(SIGBUS);
  }
  errno = saved_errno;
}

}  // namespace

int Install() {
  std::call_once(install_once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) < 0) install_error = errno;
  });
  return install_error;
}

int Register(void* address, size_t length, int prot) {
  for (int i = 0; i < kSlots; i++) {
    int expected = kFree;
    if (!slots[i].state.compare_exchange_strong(expected, kBusy, std::memory_order_acq_rel)) continue;
    slots[i].start.store(reinterpret_cast<uintptr_t>(address), std::memory_order_relaxed);
    slots[i].length.store(length, std::memory_order_relaxed);
    slots[i].prot.store(prot, std::memory_order_relaxed);
    slots[i].revoked.store(false, std::memory_order_relaxed);
    slots[i].state.store(kActive, std::memory_order_release);
    in_use.fetch_add(1, std::memory_order_relaxed);
    return i;
  }
  return -1;
}

uint64_t Revocations() { return revocations.load(std::memory_order_acquire); }

const uint64_t* RevocationsWord() {
  // A lock-free std::atomic<uint64_t> is the 8 bytes of its value (static_assert above).
  static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t));
  return reinterpret_cast<const uint64_t*>(&revocations);
}

bool IsRevoked(int slot) { return slots[slot].revoked.load(std::memory_order_acquire); }

bool IsRevokedAt(uintptr_t address) {
  for (Slot& slot : slots) {
    if (slot.state.load(std::memory_order_acquire) != kActive) continue;
    if (slot.start.load(std::memory_order_relaxed) != address) continue;
    return slot.revoked.load(std::memory_order_acquire);
  }
  return false;
}

int ReplaceAt(uintptr_t address, size_t length, int fd) {
  for (Slot& slot : slots) {
    if (slot.state.load(std::memory_order_acquire) != kActive) continue;
    if (slot.start.load(std::memory_order_relaxed) != address) continue;
    if (slot.length.load(std::memory_order_relaxed) != length) return ENOENT;
    if (slot.revoked.load(std::memory_order_acquire)) return ENOENT;
    void* r = mmap(reinterpret_cast<void*>(address), length, slot.prot.load(std::memory_order_relaxed),
                   MAP_FIXED | MAP_SHARED, fd, 0);
    return r == MAP_FAILED ? errno : 0;
  }
  return ENOENT;
}

bool Unregister(int slot) {
  slots[slot].state.store(kBusy, std::memory_order_release);
  bool revoked = slots[slot].revoked.load(std::memory_order_acquire);
  slots[slot].state.store(kFree, std::memory_order_release);
  in_use.fetch_sub(1, std::memory_order_relaxed);
  return revoked;
}

int Capacity() { return kSlots; }

int InUse() { return in_use.load(std::memory_order_relaxed); }

}  // namespace devlease::sigbus_guard
