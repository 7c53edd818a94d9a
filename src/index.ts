// devlease public API (VERSION: src/version.ts, the command line reads it without loading the rest).

// Broker: for embedding a USD in your own process.
export { Broker, type BrokerOptions } from './broker/broker.js';
export {
  type BrokerConfig,
  ConfigError,
  configFromObject,
  defaultConfig,
  loadConfig,
  parseConfig,
} from './broker/config.js';
export type { CallerContext, LeaseRequest, MapRequest, PolicyModule, Verdict } from './broker/policy.js';
export { DmaBuffer, IovaAllocator } from './client/dma.js';
export { type LeaseError, leaseError } from './client/errors.js';
export type { Isolation, LeaseInfo } from './client/info.js';
// Client library: lease a slice of a device from a broker.
export { type ConnectOptions, connect, Lease } from './client/lease.js';
export { type Completion, type Descriptor, DeviceStatusError, Sa1Queue } from './client/sa1-queue.js';
export type { Device } from './device/device.js';
export { openDevice } from './device/open.js';
export { VfioUserDevice } from './device/vfio-user-device.js';
export { VERSION } from './version.js';
