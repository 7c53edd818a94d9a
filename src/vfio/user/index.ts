// vfio-user: codec, client and server (QEMU docs/interop/vfio-user.rst). See docs/PROTOCOL.md.
export { errnoName, ProtocolError, type VfioUserCallError } from '../../errors.js';
export {
  buildRegionCaps,
  type CapSpec,
  parseRegionCaps,
  type RegionCaps,
  type SparseMmapArea,
} from './caps.js';
export { type CallOptions, type FdLike, type ReplyMessage, RequestChannel } from './channel.js';
export { type RegionInfo, VfioUserClient, type VfioUserClientOptions } from './client.js';
export {
  decodeMessage,
  encodeCommand,
  encodeErrorReply,
  encodeMessage,
  encodeReply,
  errorReason,
  isError,
  isReply,
  type VfioUserMessage,
  wantsReply,
} from './codec.js';
export { VfioUserConnection } from './connection.js';
export * from './device-model.js';
export * from './messages.js';
export { MAX_PEER_COMMANDS, type PeerDma } from './peer-dma.js';
export * from './protocol.js';
export * from './region-io-fds.js';
export { type VfioUserListenOptions, VfioUserServer, type VfioUserServerOptions } from './server.js';
export {
  connectVfioUser,
  DEFAULT_MAX_MESSAGE,
  type MessageSocket,
  type ReceivedRecord,
  VFIO_USER_FRAMING,
  vfioUserPair,
} from './transport.js';
export { type Capabilities, readCapabilities } from './version.js';
