// Unix socket listener. `listen = unix:/path` serves the same routes to curl
// --unix-socket and to node:http. The socket file is removed on exit, and a
// stale one left by a killed process does not stop the next start.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, curl, httpRequest, keyHeader, makeTempDir, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

describe('unix socket', () => {
  let up;
  let jg;
  let socketPath;

  before(async () => {
    up = await startUpstream();
    socketPath = path.join(makeTempDir('jg-unix-'), 'jg.sock');
    jg = await startJobgate({ upstreamUrl: up.url, flags: { listen: `unix:${socketPath}` } });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  test('ready line names the socket', () => {
    assert.equal(jg.socketPath, socketPath);
    assert.ok(fs.statSync(socketPath).isSocket());
  });

  test('curl over the socket gets miss then hit', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const url = `http://localhost${JOB_PATH(id)}`;
    const first = await curl(url, { unixSocket: socketPath, headers: keyHeader(up, 'A1') });
    assert.equal(first.status, 200);
    assert.equal(first.headers['cache-status'], 'jobgate; fwd=miss; fwd-status=200; stored');
    assert.equal(first.body, up.jobBody(id));

    const second = await curl(url, { unixSocket: socketPath, headers: keyHeader(up, 'A1') });
    assert.equal(second.status, 200);
    assert.equal(second.headers['cache-status'], 'jobgate; hit');
    assert.equal(up.jobCount(id), 1);
  });

  test('node client and pass-through over the socket', async () => {
    const res = await httpRequest({ socketPath, path: '/healthcheck' });
    assert.equal(res.status, 200);
    assert.equal(res.json.message, 'ok');
    assert.equal(res.headers['cache-status'], 'jobgate; fwd=bypass');

    const post = await curl('http://localhost/echo/u', { unixSocket: socketPath, method: 'POST', data: 'over-unix' });
    assert.equal(post.status, 200);
    assert.equal(Buffer.from(post.json.body, 'base64').toString(), 'over-unix');
  });
});

describe('unix socket lifecycle', () => {
  test('socket file removed on exit, stale file replaced', async () => {
    const up = await startUpstream();
    const socketPath = path.join(makeTempDir('jg-unix-'), 'jg.sock');
    try {
      const first = await startJobgate({ upstreamUrl: up.url, flags: { listen: `unix:${socketPath}` } });
      assert.equal(await first.stop('SIGTERM'), 0, first.stderrTail());
      assert.equal(fs.existsSync(socketPath), false, 'socket file left after a clean exit');

      const killed = await startJobgate({ upstreamUrl: up.url, flags: { listen: `unix:${socketPath}` } });
      await killed.stop('SIGKILL');
      assert.ok(fs.existsSync(socketPath), 'SIGKILL leaves the socket file');

      const again = await startJobgate({ upstreamUrl: up.url, flags: { listen: `unix:${socketPath}` } });
      const res = await httpRequest({ socketPath, path: '/healthcheck' });
      assert.equal(res.status, 200);
      await again.stopChecked();
    } finally {
      await up.close();
    }
  });
});
