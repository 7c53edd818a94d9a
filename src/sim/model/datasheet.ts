// The SA-1 datasheet's numbers live in src/hw/sa1/datasheet.ts, shared with
// the driver and the client; re-exported so the simulator keeps reading them
// from './datasheet.js'.
export * from '../../hw/sa1/datasheet.js';
