// libvfio-user's `client` sample against `devlease sim`. The sample is a
// scripted client for libvfio-user's own `server` sample: after the generic
// steps it asserts that sample's ids (0xdead:0xbeef) and layout, so against
// any other device it can only get as far as that first assertion. Up to it
// a stock C client exercises devlease's server side over the stream
// transport: VERSION, an error reply it checks (EINVAL for a bogus region),
// GET_INFO (it demands 9 regions), GET_REGION_INFO of every region (with its
// capability and fd checks), and a config-space read. That much is tested here.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peers } from './helpers/peers.js';

const leakCheck = trackFdLeaks();
const peers = new Peers();
after(async () => {
  await peers.close();
  await leakCheck();
});

test("libvfio-user's client sample gets through negotiation, an error reply, device and region info of devlease sim", async () => {
  const sock = join(peers.dir, 'sim.sock');
  const sim = await peers.sim(sock, ['--queues', '4']);
  const client = await peers.runClient(sock);
  const stderr = client.stderr();
  // (Its stdout is block-buffered into a pipe and lost on abort(); its stderr tells each step.)
  assert.doesNotMatch(stderr, /failed to connect server/, 'connected over SOCK_STREAM');
  // The client reads region 0xdeadbeef and demands EINVAL: this line is its check passing (errx otherwise).
  assert.match(stderr, /failed to read from region -559038737 0-0x3: Invalid argument/, stderr);
  assert.doesNotMatch(stderr, /expected EINVAL accessing bogus region/, stderr);
  assert.doesNotMatch(stderr, /bad number of device regions|failed to get device info/, stderr);
  // It stops at the first check of the server sample's own identity, after reading devlease's config space.
  assert.match(stderr, /Assertion `config_space\.id\.vid == 0xdead' failed/, stderr);
  assert.equal(
    client.result.signal,
    'SIGABRT',
    `client ended with ${JSON.stringify(client.result)}: ${stderr}`,
  );
  assert.ok(sim.running, `devlease sim survives the client's abort: ${sim.stderr()}`);
});
