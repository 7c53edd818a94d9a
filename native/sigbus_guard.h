// The SIGBUS guard: mappings registered here survive the file under them
// being truncated. A process-wide SIGBUS handler looks the faulting address
// up in a fixed table (no allocation, no locks: it runs in signal context),
// maps anonymous zero pages over the whole mapping, marks it revoked and
// returns, so the faulting access is retried and reads zero. Faults outside
// any registered mapping go to the previous handler, or kill the process as
// SIGBUS always would.
#pragma once

#include <cstddef>
#include <cstdint>

namespace devlease::sigbus_guard {

/** Installs the handler once per process; returns 0 or an errno. */
int Install();
/** Guards [address, address + length) re-mapped with `prot` on revocation; returns a slot or -1 if the table is full. */
int Register(void* address, size_t length, int prot);
/** Revocations made so far in this process (any slot): unchanged across an access means none happened in it. */
uint64_t Revocations();
/** The revocation counter itself (static, never freed): readers in JavaScript load it without a call. */
const uint64_t* RevocationsWord();
/** True once the handler replaced the slot's mapping. */
bool IsRevoked(int slot);
/**
 * Whether the guarded mapping starting at `address` was revoked (false if none is guarded there): for a
 * thread that holds the mapping's memory but not its handle (the simulator's device worker).
 */
bool IsRevokedAt(uintptr_t address);
/**
 * Maps `fd` (MAP_SHARED, offset 0, the slot's prot) over the guarded, not yet revoked mapping that starts at
 * `address` and is `length` bytes long, in one MAP_FIXED: a thread reading the range sees the old file or the
 * new one, never a hole. Returns 0, ENOENT (no such guarded mapping) or mmap's errno. The caller must know
 * the range stays mapped meanwhile (its owner unmaps it only after this returns).
 */
int ReplaceAt(uintptr_t address, size_t length, int fd);
/** How many mappings the table can guard at once (Register returns -1 past it). */
int Capacity();
/** Mappings guarded right now, in this whole process. */
int InUse();
/** Stops guarding the slot (before the range is unmapped); returns whether it had been revoked. */
bool Unregister(int slot);

}  // namespace devlease::sigbus_guard
