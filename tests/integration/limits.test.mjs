// Client limits and framing. These are all rejected without an upstream
// request: a URI above max_uri_bytes, a header block above max_header_bytes,
// more than max_headers headers, a pass-through body above
// max_request_body_bytes, a request head that arrives too slowly, ambiguous
// framing and a GET with a body on the job route. client_header_timeout_ms
// is a total deadline, so trickling bytes does not extend it. An
// absolute-form target or a Host header never redirects jobgate to another
// upstream.

import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, rawExchange, startJobgate } from './harness.mjs';
import { KEYS, startUpstream } from './upstream.mjs';

const HEADER_TIMEOUT_MS = 300;

describe('client limits', () => {
  let up;
  let jg;
  let jobId;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({
      upstreamUrl: up.url,
      flags: {
        client_header_timeout_ms: HEADER_TIMEOUT_MS,
        max_uri_bytes: 1024,
        max_header_bytes: 2048,
        max_headers: 20,
        max_request_body_bytes: 1000,
      },
    });
    jobId = up.createJob({ org: 'A', status: 'completed' });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  function head(target, extraLines = []) {
    return [
      `GET ${target} HTTP/1.1`,
      `Host: 127.0.0.1:${jg.port}`,
      `Galileo-API-Key: ${KEYS.A1}`,
      'Connection: close',
      ...extraLines,
      '',
      '',
    ].join('\r\n');
  }

  function assertRejected(res, what) {
    assert.ok(res.status >= 400 && res.status < 500, `${what}: expected a 4xx, got ${res.status} (${res.data.slice(0, 80)})`);
  }

  test('requests within the limits are served', async () => {
    const before_ = up.counts.total;
    const res = await rawExchange(jg.port, head(`${JOB_PATH(jobId)}?pad=${'p'.repeat(500)}`, ['X-Pad: ' + 'h'.repeat(1000)]));
    assert.equal(res.status, 200);
    assert.equal(up.counts.total, before_ + 1);

    const post = await jg.request('/echo/small', { method: 'POST', body: 'b'.repeat(999) });
    assert.equal(post.status, 200);
    assert.equal(Buffer.from(post.json.body, 'base64').length, 999);
  });

  test('URI above max_uri_bytes', async () => {
    const before_ = up.counts.total;
    const job = await rawExchange(jg.port, head(`${JOB_PATH(jobId)}?pad=${'p'.repeat(2000)}`));
    assertRejected(job, 'job route');
    const pass = await rawExchange(jg.port, head(`/echo/${'p'.repeat(2000)}`));
    assertRejected(pass, 'pass-through');
    assert.equal(up.counts.total, before_);
  });

  test('header block above max_header_bytes', async () => {
    const before_ = up.counts.total;
    const one = await rawExchange(jg.port, head(JOB_PATH(jobId), [`X-Pad: ${'h'.repeat(3000)}`]));
    assertRejected(one, 'one large header');
    assert.ok([400, 413, 431].includes(one.status), `status ${one.status}`);
    const many = await rawExchange(jg.port, head('/healthcheck', Array.from({ length: 15 }, (_, i) => `X-Pad-${i}: ${'h'.repeat(200)}`)));
    assertRejected(many, 'many medium headers');
    assert.equal(up.counts.total, before_);
  });

  test('more than max_headers headers', async () => {
    const before_ = up.counts.total;
    const res = await rawExchange(jg.port, head(JOB_PATH(jobId), Array.from({ length: 30 }, (_, i) => `X-H${i}: ${i}`)));
    assertRejected(res, '30 headers');
    const pass = await rawExchange(jg.port, head('/healthcheck', Array.from({ length: 30 }, (_, i) => `X-H${i}: ${i}`)));
    assertRejected(pass, '30 headers on pass-through');
    assert.equal(up.counts.total, before_);
  });

  test('request body above max_request_body_bytes', async () => {
    const before_ = up.counts.total;
    const sized = await rawExchange(jg.port, [
      'POST /echo/big HTTP/1.1',
      `Host: 127.0.0.1:${jg.port}`,
      'Content-Type: application/octet-stream',
      'Content-Length: 5000',
      'Connection: close',
      '',
      'b'.repeat(5000),
    ].join('\r\n'));
    assert.equal(sized.status, 413);

    const chunk = 'c'.repeat(2500);
    const chunked = await rawExchange(jg.port, [
      'POST /echo/big HTTP/1.1',
      `Host: 127.0.0.1:${jg.port}`,
      'Transfer-Encoding: chunked',
      'Connection: close',
      '',
      `${chunk.length.toString(16)}\r\n${chunk}\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`,
    ].join('\r\n'));
    assert.equal(chunked.status, 413);
    assert.equal(up.counts.total, before_);
  });

  test('slow request head is closed', async () => {
    const before_ = up.counts.total;
    const res = await rawExchange(jg.port, `GET ${JOB_PATH(jobId)} HTTP/1.1\r\nHost: x\r\n`, { timeoutMs: 3000 });
    assert.ok(res.closed, `connection still open after ${res.elapsedMs} ms`);
    assert.ok(res.status === undefined || res.status === 408 || res.status === 400, `status ${res.status}`);
    assert.equal(up.counts.total, before_);
  });

  test('trickled request head is closed', async () => {
    const before_ = up.counts.total;
    const started = Date.now();
    const socket = net.connect({ host: '127.0.0.1', port: jg.port });
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    let closed = false;
    socket.on('close', () => { closed = true; });
    socket.on('error', () => { closed = true; });
    socket.write(`GET ${JOB_PATH(jobId)} HTTP/1.1\r\nHost: x\r\nX-Slow: `);

    // One byte every 50 ms, at most 60 bytes (3 s), until jobgate closes.
    for (let i = 0; i < 60 && !closed; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      if (!closed) {
        socket.write('a');
      }
    }
    const elapsed = Date.now() - started;
    socket.destroy();
    assert.ok(closed, 'a trickled head was never closed');
    assert.ok(elapsed < 2500, `closed only after ${elapsed} ms`);
    assert.equal(up.counts.total, before_);
  });

  test('ambiguous framing gets 400 and close', async () => {
    const before_ = up.counts.total;
    const cases = {
      'Transfer-Encoding and Content-Length': ['Transfer-Encoding: chunked', 'Content-Length: 5'],
      'two Content-Length values': ['Content-Length: 3', 'Content-Length: 4'],
      'Content-Length list': ['Content-Length: 3, 4'],
      'Transfer-Encoding gzip, chunked': ['Transfer-Encoding: gzip, chunked'],
      'Transfer-Encoding identity': ['Transfer-Encoding: identity'],
    };
    for (const [name, lines] of Object.entries(cases)) {
      const data = [
        'POST /echo/framing HTTP/1.1',
        `Host: 127.0.0.1:${jg.port}`,
        ...lines,
        '',
        '0\r\n\r\n',
      ].join('\r\n');
      const res = await rawExchange(jg.port, data, { timeoutMs: 3000 });
      assert.equal(res.status, 400, `${name}: ${res.data.slice(0, 80)}`);
      assert.ok(res.closed, `${name}: connection left open`);
    }
    assert.equal(up.counts.total, before_);
  });

  test('GET with a body on the job route gets 400', async () => {
    const before_ = up.counts.total;
    const res = await rawExchange(jg.port, [
      `GET ${JOB_PATH(jobId)} HTTP/1.1`,
      `Host: 127.0.0.1:${jg.port}`,
      `Galileo-API-Key: ${KEYS.A1}`,
      'Content-Length: 5',
      '',
      'hello',
    ].join('\r\n'), { timeoutMs: 3000 });
    assert.equal(res.status, 400);
    assert.ok(res.closed, 'connection left open');
    assert.equal(up.counts.total, before_);
  });
});

describe('upstream is fixed by config', () => {
  let up;
  let jg;
  let decoy;
  let decoyHits = 0;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url });
    decoy = http.createServer((req, res) => {
      decoyHits += 1;
      res.end('decoy');
    });
    await new Promise((resolve) => decoy.listen(0, '127.0.0.1', resolve));
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
    await new Promise((resolve) => decoy?.close(resolve));
  });

  test('absolute-form target and Host do not redirect', async () => {
    const decoyPort = decoy.address().port;
    const id = up.createJob({ org: 'A', status: 'completed' });
    const targets = [
      `http://127.0.0.1:${decoyPort}${JOB_PATH(id)}`,
      `http://127.0.0.1:${decoyPort}/healthcheck`,
    ];
    for (const target of targets) {
      const res = await rawExchange(jg.port, [
        `GET ${target} HTTP/1.1`,
        `Host: 127.0.0.1:${decoyPort}`,
        `Galileo-API-Key: ${KEYS.A1}`,
        'Connection: close',
        '',
        '',
      ].join('\r\n'), { timeoutMs: 3000 });
      assert.ok(res.status !== undefined, `${target}: no answer`);
      assert.ok(!res.data.includes('decoy'), `${target}: answered by the decoy`);
    }
    const hostOnly = await rawExchange(jg.port, [
      'GET /healthcheck HTTP/1.1',
      `Host: 127.0.0.1:${decoyPort}`,
      'Connection: close',
      '',
      '',
    ].join('\r\n'), { timeoutMs: 3000 });
    assert.equal(hostOnly.status, 200);
    assert.ok(!hostOnly.data.includes('decoy'));
    assert.equal(decoyHits, 0);
  });
});
