// The SA-1 simulator's public entry. src/sim/model/ is the device (registers,
// queues, engine, IOMMU, firmware: no threads, no sockets); src/sim/host/
// hosts it (the worker thread, the mailbox to it, the vfio-user frontend,
// the child process). Outside src/sim, import from here.
export {
  type ChildSimulator,
  DEFAULT_OPTIONS,
  type DeviceStats,
  dmaMapRoom,
  type InjectRequest,
  makeFirmwareImage,
  OptionError,
  resolveOptions,
  type Sa1Options,
  SIM_GUARD_RESERVE,
  SIM_MAX_PENDING,
  SIM_MAX_PENDING_PER_UID,
  SIM_VERSION_GRACE_MS,
  type SimulatorHandle,
  type SimulatorOptions,
  spawnSimulator,
  startSimulator,
} from './host/simulator.js';
