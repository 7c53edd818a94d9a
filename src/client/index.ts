// devlease client library: lease a slice of a device from a broker.

export { DmaBuffer, IovaAllocator } from './dma.js';
export { type LeaseError, leaseError } from './errors.js';
export type { Isolation, LeaseInfo } from './info.js';
export { type ConnectOptions, connect, Lease } from './lease.js';
