// HTTP abuse beside a well-behaved client. Each case runs while a good
// client polls a cached job in a loop. Every one of its requests must get a
// 200 hit, and its p99 latency is printed (never asserted). The bad
// requests are ambiguous framing, odd chunk-size lines, an absolute-form
// target, two Host headers, %00 and %2F in the job id, huge header blocks,
// a huge URI and 2000 slowloris connections. Each must get a 4xx or a
// close within its deadline, and the upstream must see none of them.
// Pipelined requests of different organizations on one connection must
// each get their own response, in order, and never a job of another
// organization.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, httpRequest, keyHeader, startJobgate } from './harness.mjs';
import { exchange, openFileLimit, percentile, requestHead, slowloris } from './rawhttp.mjs';
import { KEYS, ORGS, startUpstream } from './upstream.mjs';

const HEADER_TIMEOUT_MS = 1000;
// Slack for a close after the header deadline: a sanitizer build on a
// busy 2-core machine accepting 2000 connections.
const CLOSE_MARGIN_MS = 3000;
const SLOWLORIS_CONNECTIONS = 2000;
// File descriptors kept free for everything else in this process.
const SPARE_FDS = 500;
const GOOD_CLIENT_MAX_REQUESTS = 200000;
const HIT = 'jobgate; hit';

// Polls one cached job until stop() and records every response.
function startGoodClient(port, path, headers) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const latencies = [];
  const failures = [];
  let stopping = false;
  const loop = (async () => {
    for (let i = 0; i < GOOD_CLIENT_MAX_REQUESTS && !stopping; i++) {
      const started = process.hrtime.bigint();
      try {
        const res = await httpRequest({ agent, host: '127.0.0.1', port, path, headers, timeoutMs: 10000 });
        latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
        if (res.status !== 200 || res.headers['cache-status'] !== HIT) {
          failures.push(`request ${i}: status ${res.status}, Cache-Status ${res.headers['cache-status']}`);
        }
      } catch (err) {
        failures.push(`request ${i}: ${err.message}`);
      }
    }
  })();
  return {
    async stop() {
      stopping = true;
      await loop;
      agent.destroy();
      return { latencies, failures };
    },
  };
}

describe('abuse beside a good client', () => {
  let up;
  let jg;
  let goodJob;
  let maxConnections;

  before(async () => {
    up = await startUpstream();
    const limit = await openFileLimit();
    maxConnections = Math.max(SLOWLORIS_CONNECTIONS + 100, 1000);
    jg = await startJobgate({
      upstreamUrl: up.url,
      flags: {
        client_header_timeout_ms: HEADER_TIMEOUT_MS,
        max_connections: maxConnections,
        auth_ttl: 3600,
        // Several workers split max_connections, and the kernel need not
        // spread the slowloris connections evenly.
        workers: 1,
      },
    });
    console.log(`# open file limit of the test process: ${limit}`);

    goodJob = up.createJob({ org: 'A', status: 'completed' });
    const first = await jg.get(JOB_PATH(goodJob), { headers: keyHeader(up, 'A1') });
    assert.equal(first.status, 200);
    const hit = await jg.get(JOB_PATH(goodJob), { headers: keyHeader(up, 'A1') });
    assert.equal(hit.headers['cache-status'], HIT);
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  // Runs body beside the good client and checks the good client after.
  async function besideGoodClient(name, body) {
    const good = startGoodClient(jg.port, JOB_PATH(goodJob), keyHeader(up, 'A1'));
    let outcome;
    try {
      await body();
    } finally {
      outcome = await good.stop();
    }
    const { latencies, failures } = outcome;
    console.log(`# ${name}: good client made ${latencies.length} requests, p99 ${percentile(latencies, 99).toFixed(2)} ms, max ${Math.max(...latencies).toFixed(2)} ms`);
    assert.deepEqual(failures, [], `${name}: the good client was not served`);
    assert.ok(latencies.length > 0, `${name}: the good client made no request`);
  }

  // Sends data on a new connection. Within timeoutMs, jobgate must send
  // only 4xx responses, or close without a response.
  async function assertRefused(what, data, { timeoutMs = 5000 } = {}) {
    const r = await exchange(jg.port, data, { timeoutMs });
    assert.ok(!r.timedOut, `${what}: no response and no close within ${timeoutMs} ms (got ${JSON.stringify(r.raw.subarray(0, 120).toString('latin1'))})`);
    for (const res of r.responses) {
      assert.ok(res.status >= 400 && res.status < 500, `${what}: ${res.statusLine} ${res.body.slice(0, 120)}`);
    }
    if (r.responses.length === 0) {
      assert.ok(r.closed, `${what}: no response and no close`);
    }
    return r;
  }

  function jobHead(target, extra = [], key = KEYS.A1) {
    return requestHead('GET', target, [['Host', '127.0.0.1'], ['Galileo-API-Key', key], ...extra]);
  }

  test('Transfer-Encoding with Content-Length', async () => {
    await besideGoodClient('TE+CL', async () => {
      const smuggled = up.createJob({ org: 'A', status: 'completed' });
      const before_ = up.counts.total;
      const cases = {
        'job route': `${requestHead('GET', JOB_PATH(goodJob), [['Host', 'x'], ['Galileo-API-Key', KEYS.A1], ['Transfer-Encoding', 'chunked'], ['Content-Length', '4']])}0\r\n\r\n`,
        'pass-through': `${requestHead('POST', '/echo/te-cl', [['Host', 'x'], ['Transfer-Encoding', 'chunked'], ['Content-Length', '4']])}0\r\n\r\n`,
      };
      for (const [name, data] of Object.entries(cases)) {
        // A request hidden behind the body: only a parser that believed
        // Content-Length would find it.
        const r = await assertRefused(name, data + jobHead(JOB_PATH(smuggled)));
        assert.equal(r.responses.length, 1, `${name}: ${r.responses.length} responses`);
        assert.equal(r.responses[0].status, 400, name);
        assert.ok(r.closed, `${name}: connection left open`);
      }
      assert.equal(up.counts.total, before_);
    });
  });

  test('two Content-Length headers', async () => {
    await besideGoodClient('two Content-Length', async () => {
      const before_ = up.counts.total;
      const cases = {
        'job route': `${requestHead('GET', JOB_PATH(goodJob), [['Host', 'x'], ['Galileo-API-Key', KEYS.A1], ['Content-Length', '0'], ['Content-Length', '5']])}hello`,
        'pass-through': `${requestHead('POST', '/echo/two-cl', [['Host', 'x'], ['Content-Length', '5'], ['Content-Length', '3']])}hello`,
      };
      for (const [name, data] of Object.entries(cases)) {
        const r = await assertRefused(name, data);
        assert.equal(r.responses.length, 1, `${name}: ${r.responses.length} responses`);
        assert.equal(r.responses[0].status, 400, name);
        assert.ok(r.closed, `${name}: connection left open`);
      }
      assert.equal(up.counts.total, before_);
    });
  });

  // RFC 9112 section 7.1: chunk-size = 1*HEXDIG, then optional ";ext".
  // A sign, leading whitespace or a 0x prefix is not a chunk size. An
  // extension and leading zeros are valid: jobgate may relay those, but
  // then the upstream must get exactly the body "hello".
  const CHUNK_CASES = [
    { name: 'plus sign', size: '+5', valid: false },
    { name: 'leading space', size: ' 5', valid: false },
    { name: '0x prefix', size: '0x5', valid: false },
    { name: 'extension', size: '5;ext', valid: true },
    { name: 'long hex with leading zeros', size: `${'0'.repeat(300)}5`, valid: true },
    { name: 'long hex above 2^64', size: 'f'.repeat(300), valid: false },
  ];
  for (const c of CHUNK_CASES) {
    test(`chunk size: ${c.name}`, async () => {
      await besideGoodClient(`chunk size ${c.name}`, async () => {
        const before_ = up.count({ route: 'echo' });
        const data = `${requestHead('POST', '/echo/chunked', [['Host', 'x'], ['Transfer-Encoding', 'chunked'], ['Connection', 'close']])}${c.size}\r\nhello\r\n0\r\n\r\n`;
        const r = await exchange(jg.port, data, { timeoutMs: 5000 });
        assert.ok(!r.timedOut, `${c.name}: no response and no close`);
        const relayed = up.count({ route: 'echo' }) - before_;
        if (c.valid && relayed > 0) {
          assert.equal(relayed, 1);
          assert.equal(r.responses[0]?.status, 200);
          assert.equal(Buffer.from(r.responses[0].json.body, 'base64').toString(), 'hello');
          return;
        }
        assert.equal(relayed, 0, `${c.name}: the upstream got the request (response ${r.responses[0]?.statusLine})`);
        for (const res of r.responses) {
          assert.ok(res.status >= 400 && res.status < 500, `${c.name}: ${res.statusLine}`);
        }
        if (r.responses.length === 0) {
          assert.ok(r.closed, `${c.name}: no response and no close`);
        }
      });
    });
  }

  test('absolute-form target', async () => {
    await besideGoodClient('absolute-form', async () => {
      const other = up.createJob({ org: 'A', status: 'completed' });
      const before_ = up.counts.total;
      for (const target of [`http://evil.example${JOB_PATH(other)}`, 'http://evil.example/healthcheck']) {
        const r = await assertRefused(target, jobHead(target, [['Connection', 'close']]));
        assert.equal(r.responses.length, 1, target);
      }
      assert.equal(up.counts.total, before_);
    });
  });

  // RFC 9112 section 3.2: a server must respond 400 to a request with more
  // than one Host header field line.
  test('two Host headers', async () => {
    await besideGoodClient('two Host', async () => {
      const other = up.createJob({ org: 'A', status: 'completed' });
      const before_ = up.counts.total;
      const cases = {
        'job route': requestHead('GET', JOB_PATH(other), [['Host', '127.0.0.1'], ['Host', 'evil.example'], ['Galileo-API-Key', KEYS.A1], ['Connection', 'close']]),
        'pass-through': requestHead('GET', '/healthcheck', [['Host', '127.0.0.1'], ['Host', 'evil.example'], ['Connection', 'close']]),
      };
      for (const [name, data] of Object.entries(cases)) {
        const r = await assertRefused(name, data);
        assert.equal(r.responses[0]?.status, 400, name);
      }
      assert.equal(up.counts.total, before_);
    });
  });

  test('pipelined requests of two organizations', async () => {
    await besideGoodClient('pipelined', async () => {
      const aCached = goodJob;
      const bCached = up.createJob({ org: 'B', status: 'completed' });
      const aNew = up.createJob({ org: 'A', status: 'completed' });
      const bNew = up.createJob({ org: 'B', status: 'in_progress' });
      const warm = await jg.get(JOB_PATH(bCached), { headers: keyHeader(up, 'B1') });
      assert.equal(warm.status, 200);
      const before_ = up.counts.total;

      // expect: the job id and org of a 200, or the status of an error.
      const plan = [
        { job: aCached, key: 'A1', status: 200, org: 'A', hit: true },
        { job: bCached, key: 'B1', status: 200, org: 'B', hit: true },
        { job: aCached, key: 'B1', status: 404 },
        { job: bCached, key: 'A1', status: 404 },
        { job: aNew, key: 'A2', status: 200, org: 'A', hit: false },
        { job: bNew, key: 'B2', status: 200, org: 'B', hit: false },
        { job: aNew, key: 'B2', status: 404 },
        { job: bCached, key: 'B1', status: 200, org: 'B', hit: true },
        { job: aCached, key: 'A1', status: 200, org: 'A', hit: true },
      ];
      const data = plan.map((p, i) => requestHead('GET', JOB_PATH(p.job), [
        ['Host', '127.0.0.1'],
        ['Galileo-API-Key', KEYS[p.key]],
        ['X-Request-Id', `pipelined-${i}`],
        ...(i === plan.length - 1 ? [['Connection', 'close']] : []),
      ])).join('');
      const r = await exchange(jg.port, data, { timeoutMs: 10000, expectResponses: plan.length });
      assert.ok(!r.timedOut, `only ${r.responses.length} of ${plan.length} responses arrived`);
      assert.equal(r.responses.length, plan.length);

      plan.forEach((p, i) => {
        const res = r.responses[i];
        const what = `request ${i} (${p.key} asks for a job of org ${p.org ?? 'other'})`;
        assert.equal(res.status, p.status, `${what}: ${res.statusLine} ${res.body.slice(0, 100)}`);
        if (p.status === 200) {
          assert.equal(res.json?.id, p.job, `${what}: response carries job ${res.json?.id}`);
          assert.equal(res.json?.organization_id, ORGS[p.org], what);
          assert.equal(res.json?.organization_id, ORGS[p.key[0]], `${what}: cross-org response`);
          assert.equal(res.headers['cache-status'] === HIT, p.hit, `${what}: Cache-Status ${res.headers['cache-status']}`);
        } else {
          assert.deepEqual(res.json, { detail: 'Job not found' }, what);
        }
      });
      // The misses only: the three cross-org requests and the two new jobs.
      assert.equal(up.counts.total, before_ + 5);
    });
  });

  test('%00 and %2F in the job id', async () => {
    await besideGoodClient('%00 and %2F', async () => {
      const id = up.createJob({ org: 'A', status: 'completed' });
      const before_ = up.counts.total;
      const targets = [
        JOB_PATH(`${id}%00`),
        JOB_PATH(`%00${id}`),
        JOB_PATH(`${id.slice(0, 18)}%00${id.slice(19)}`),
        JOB_PATH(`${id}%2F`),
        JOB_PATH(`${id}%2f..%2f..%2fhealthcheck`),
        JOB_PATH(`..%2F..%2Fhealthcheck`),
        JOB_PATH(`${id.slice(0, 8)}%2F${id.slice(9)}`),
        `/public${JOB_PATH(`${id}%00`)}`,
      ];
      for (const target of targets) {
        const r = await assertRefused(target, jobHead(target, [['Connection', 'close']]));
        assert.equal(r.responses.length, 1, target);
      }
      assert.equal(up.counts.total, before_);
    });
  });

  test('200 KB of headers', async () => {
    await besideGoodClient('200 KB of headers', async () => {
      const before_ = up.counts.total;
      await assertRefused('one 200 KB header', jobHead(JOB_PATH(goodJob), [['X-Pad', 'h'.repeat(200 * 1024)]]));
      await assertRefused('200 headers of 1 KB', jobHead(JOB_PATH(goodJob),
        Array.from({ length: 200 }, (_, i) => [`X-Pad-${i}`, 'h'.repeat(1024)])));
      assert.equal(up.counts.total, before_);
    });
  });

  test('10 000 header lines', async () => {
    await besideGoodClient('10 000 header lines', async () => {
      const before_ = up.counts.total;
      await assertRefused('10 000 headers', jobHead(JOB_PATH(goodJob),
        Array.from({ length: 10000 }, (_, i) => [`X-H${i}`, `${i}`])));
      await assertRefused('10 000 headers on pass-through', requestHead('GET', '/healthcheck',
        Array.from({ length: 10000 }, (_, i) => [`X-H${i}`, `${i}`])));
      assert.equal(up.counts.total, before_);
    });
  });

  test('100 KB URI', async () => {
    await besideGoodClient('100 KB URI', async () => {
      const before_ = up.counts.total;
      const pad = 'p'.repeat(100 * 1024);
      await assertRefused('job route', jobHead(`${JOB_PATH(goodJob)}?pad=${pad}`, [['Connection', 'close']]));
      await assertRefused('pass-through', requestHead('GET', `/echo/${pad}`, [['Host', 'x'], ['Connection', 'close']]));
      assert.equal(up.counts.total, before_);
    });
  });

  test('2000 slowloris connections', async () => {
    const limit = await openFileLimit();
    let count = SLOWLORIS_CONNECTIONS;
    if (limit - SPARE_FDS < count) {
      count = Math.max(100, limit - SPARE_FDS);
      console.log(`# open file limit ${limit} leaves room for ${count} slowloris connections, not ${SLOWLORIS_CONNECTIONS}`);
    }
    const timeoutsBase = await jg.metric('jobgate_header_timeouts_total');
    const before_ = up.counts.total;
    let conns;
    await besideGoodClient(`${count} slowloris connections`, async () => {
      conns = await slowloris(jg.port, {
        count,
        prefix: `GET ${JOB_PATH(goodJob)} HTTP/1.1\r\nHost: 127.0.0.1\r\nGalileo-API-Key: ${KEYS.A1}\r\nX-Slow: `,
        tickMs: 200,
        maxTicks: Math.ceil((HEADER_TIMEOUT_MS + CLOSE_MARGIN_MS) / 200) + 5,
      });
    });

    const open = conns.filter((c) => c.closedAt === null);
    assert.equal(open.length, 0, `${open.length} of ${count} slowloris connections were never closed`);
    const lifetimes = conns.map((c) => c.closedAt - c.connectedAt);
    const longest = Math.max(...lifetimes);
    const shortest = Math.min(...lifetimes);
    console.log(`# slowloris: ${count} connections closed after ${shortest} to ${longest} ms (p50 ${percentile(lifetimes, 50)} ms)`);
    assert.ok(longest <= HEADER_TIMEOUT_MS + CLOSE_MARGIN_MS, `a slowloris connection lived ${longest} ms`);
    assert.ok(shortest >= HEADER_TIMEOUT_MS * 0.8, `a slowloris connection was closed after only ${shortest} ms`);
    assert.equal(up.counts.total, before_);
    assert.ok(await jg.metric('jobgate_header_timeouts_total') >= timeoutsBase + count);
    // Only the good client's connection, at most, is left.
    await jg.waitForMetric('jobgate_connections', (v) => v <= 1, 5000);
  });
});
