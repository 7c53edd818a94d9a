// devlease client library: lease a slice of a device from a broker (`import … from 'devlease/client'`).
// It loads only the client's modules; 'devlease' itself also loads the broker (~100 more of Node's modules).

export { DmaBuffer, IovaAllocator } from './dma.js';
export { type LeaseError, leaseError } from './errors.js';
export type { Isolation, LeaseInfo } from './info.js';
export { type ConnectOptions, connect, Lease } from './lease.js';
export { type Completion, type Descriptor, DeviceStatusError, Sa1Queue } from './sa1-queue.js';
