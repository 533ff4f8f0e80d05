// Fault matrix: every upstream fault with 20 coalesced waiters. Twenty
// callers proven for one organization request the same job while the
// upstream delays its response to the one request it received. Once
// jobgate's jobgate_coalesced_total shows that the other 19 joined, the
// upstream responds with the fault. Every waiter must get the same response
// within its deadline, and the upstream must have seen exactly one request.
// Nothing may be cached, so the next request goes upstream again and stores
// the good response. The upstream pool must serve a fresh job afterwards.
//
// A refused connection cannot be held by a gate, so that case stops
// jobgate with SIGSTOP while the 20 requests arrive in the kernel's
// buffers and resumes it with SIGCONT: jobgate then reads them all in one
// loop turn, before the one connect attempt has even started.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, startJobgate } from './harness.mjs';
import { createGate, startUpstream } from './upstream.mjs';

const WAITERS = 20;
const UPSTREAM_TIMEOUT_MS = 1500;
const MAX_PASSTHROUGH_BYTES = 1024 * 1024;
// Time from the release of the gate to the last response, with room for a
// sanitizer build on a busy 2-core machine.
const RESPONSE_DEADLINE_MS = UPSTREAM_TIMEOUT_MS + 3000;
const KEY_NAMES = ['A1', 'A2', 'A3'];

const STORED = 'jobgate; fwd=miss; fwd-status=200; stored';
const HIT = 'jobgate; hit';

// Peak and current resident memory of a process, in KiB.
function memoryKiB(pid) {
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return {
    hwm: Number(/^VmHWM:\s+(\d+) kB/m.exec(text)[1]),
    rss: Number(/^VmRSS:\s+(\d+) kB/m.exec(text)[1]),
  };
}

// Sends one request per key name, all at once. Each result carries
// doneAt, the time its response was complete.
function sendWaiters(jg, up, id, { onRequest } = {}) {
  return Array.from({ length: WAITERS }, (_, i) => {
    const name = KEY_NAMES[i % KEY_NAMES.length];
    return jg.get(JOB_PATH(id), {
      headers: keyHeader(up, name),
      timeoutMs: UPSTREAM_TIMEOUT_MS + 10000,
      onRequest,
    }).then((res) => ({ ...res, doneAt: Date.now() }));
  });
}

function assertCollapsedOnce(results, what) {
  const statuses = results.map((r) => r.headers['cache-status'] ?? '');
  const collapsed = statuses.filter((s) => s.endsWith('; collapsed'));
  assert.equal(collapsed.length, WAITERS - 1, `${what}: Cache-Status values ${JSON.stringify(statuses)}`);
}

function assertRespondedBy(results, releasedAt, what) {
  const latest = Math.max(...results.map((r) => r.doneAt));
  assert.ok(latest - releasedAt <= RESPONSE_DEADLINE_MS,
    `${what}: the last waiter got its response ${latest - releasedAt} ms after the release`);
}

// The fault cases. check(res, fault, up, id) asserts one waiter's response.
const CASES = [
  {
    name: 'reset mid-body',
    fault: { kind: 'reset-mid-body' },
    check: (res) => {
      assert.equal(res.status, 502);
      assert.deepEqual(res.json, { detail: 'upstream request failed' });
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; detail=upstream-protocol(; collapsed)?$/);
    },
  },
  {
    name: 'truncated body',
    fault: { kind: 'truncate' },
    check: (res) => {
      assert.equal(res.status, 502);
      assert.deepEqual(res.json, { detail: 'upstream request failed' });
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; detail=upstream-protocol(; collapsed)?$/);
    },
  },
  {
    name: 'two JSON objects back to back',
    fault: { kind: 'concat' },
    check: (res, fault, up, id) => {
      assert.equal(res.status, 200);
      assert.equal(res.body, up.jobBody(id) + up.jobBody(id));
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; fwd-status=200; detail=[a-z0-9-]+(; collapsed)?$/);
    },
  },
  {
    name: 'garbage instead of HTTP',
    fault: { kind: 'garbage' },
    check: (res) => {
      assert.equal(res.status, 502);
      assert.deepEqual(res.json, { detail: 'upstream request failed' });
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; detail=upstream-protocol(; collapsed)?$/);
    },
  },
  {
    name: 'endless body',
    fault: { kind: 'flood' },
    memory: true,
    check: (res) => {
      assert.equal(res.status, 502);
      assert.deepEqual(res.json, { detail: 'upstream response too large' });
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; detail=upstream-too-large(; collapsed)?$/);
    },
    // jobgate must hang up soon after max_passthrough_bytes: what the
    // upstream wrote beyond that sat in socket buffers, a few MiB at most.
    after: (fault) => {
      assert.ok(fault.sentBytes >= MAX_PASSTHROUGH_BYTES, `upstream wrote only ${fault.sentBytes} bytes`);
      assert.ok(fault.sentBytes < 16 * MAX_PASSTHROUGH_BYTES,
        `upstream wrote ${fault.sentBytes} bytes before jobgate hung up`);
    },
  },
  {
    name: 'slow drip',
    // About 400 bytes at 20 ms each: 8 s, far beyond upstream_timeout_ms.
    fault: { kind: 'drip', intervalMs: 20 },
    check: (res) => {
      assert.equal(res.status, 504);
      assert.deepEqual(res.json, { detail: 'upstream timed out' });
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; detail=upstream-timeout(; collapsed)?$/);
    },
  },
  ...[500, 502, 503].map((status) => ({
    name: `upstream ${status}`,
    fault: { kind: 'status', status, detail: `scripted ${status}` },
    check: (res) => {
      assert.equal(res.status, status);
      assert.deepEqual(res.json, { detail: `scripted ${status}` });
      assert.match(res.headers['cache-status'], new RegExp(`^jobgate; fwd=miss; fwd-status=${status}; detail=status(; collapsed)?$`));
    },
  })),
  {
    name: '429 with Retry-After',
    fault: { kind: 'rate-limit', retryAfter: 17 },
    check: (res) => {
      assert.equal(res.status, 429);
      assert.equal(res.headers['retry-after'], '17');
      assert.deepEqual(res.json, { detail: 'Too Many Requests' });
    },
  },
  {
    name: 'status only inside request_data',
    fault: { kind: 'status-only-in-request-data' },
    check: (res, fault, up, id) => {
      assert.equal(res.status, 200);
      assert.equal(res.json?.id, id);
      assert.equal(res.json?.status, undefined);
      assert.equal(res.json?.request_data?.status, 'completed');
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; fwd-status=200; detail=[a-z0-9-]+(; collapsed)?$/);
    },
  },
];

describe('fault matrix', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({
      upstreamUrl: up.url,
      flags: {
        upstream_timeout_ms: UPSTREAM_TIMEOUT_MS,
        upstream_connect_timeout_ms: 500,
        max_passthrough_bytes: MAX_PASSTHROUGH_BYTES,
        auth_ttl: 3600,
      },
    });
    for (const name of KEY_NAMES) {
      const proof = up.createJob({ org: 'A', status: 'in_progress' });
      const res = await jg.get(JOB_PATH(proof), { headers: keyHeader(up, name) });
      assert.equal(res.status, 200, `proof of ${name}`);
    }
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  // After the fault the job is fetched again and stored, then served as a
  // hit, and a job never seen before goes through the pool as well.
  async function assertRecovered(id) {
    const again = await jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A1') });
    assert.equal(again.status, 200);
    assert.equal(again.headers['cache-status'], STORED, 'the fault left something in the cache');
    assert.equal(again.body, up.jobBody(id));
    assert.equal(up.jobCount(id), 2);

    const hit = await jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A2') });
    assert.equal(hit.headers['cache-status'], HIT);
    assert.equal(up.jobCount(id), 2);

    const fresh = up.createJob({ org: 'A', status: 'completed' });
    const first = await jg.get(JOB_PATH(fresh), { headers: keyHeader(up, 'A3') });
    assert.equal(first.status, 200);
    assert.equal(first.headers['cache-status'], STORED);
    const second = await jg.get(JOB_PATH(fresh), { headers: keyHeader(up, 'A1') });
    assert.equal(second.headers['cache-status'], HIT);
    assert.equal(up.jobCount(fresh), 1);
  }

  for (const c of CASES) {
    test(`${c.name} reaches all ${WAITERS} waiters`, async () => {
      const id = up.createJob({ org: 'A', status: 'completed' });
      const gate = createGate();
      const fault = up.addFault({ job: id, gate, ...c.fault });
      const coalescedBase = await jg.metric('jobgate_coalesced_total');
      const requestsBase = await jg.metric('jobgate_upstream_requests_total');
      const memoryBefore = c.memory ? memoryKiB(jg.pid) : null;

      const pending = sendWaiters(jg, up, id);
      let releasedAt;
      try {
        await gate.waitArrivals(1);
        await jg.waitForMetric('jobgate_coalesced_total', (v) => v >= coalescedBase + WAITERS - 1, 10000);
      } finally {
        releasedAt = Date.now();
        gate.release();
      }
      const results = await Promise.all(pending);

      assert.equal(up.jobCount(id), 1, 'the upstream saw more than one request');
      assert.equal(fault.hits, 1);
      assert.equal(await jg.metric('jobgate_upstream_requests_total'), requestsBase + 1);
      assert.equal(await jg.metric('jobgate_coalesced_total'), coalescedBase + WAITERS - 1);
      assertRespondedBy(results, releasedAt, c.name);
      for (const res of results) {
        c.check(res, fault, up, id);
      }
      assertCollapsedOnce(results, c.name);
      c.after?.(fault);
      if (memoryBefore !== null) {
        const memoryAfter = memoryKiB(jg.pid);
        const growthKiB = memoryAfter.hwm - memoryBefore.hwm;
        console.log(`# ${c.name}: jobgate peak RSS grew by ${growthKiB} KiB; upstream wrote ${fault.sentBytes} bytes`);
        assert.ok(growthKiB < 32 * 1024, `jobgate peak RSS grew by ${growthKiB} KiB`);
      }

      await assertRecovered(id);
      assert.equal(jg.exited, false);
    });
  }
});

describe('fault matrix: connection refused', () => {
  let up;
  let jg;
  let upstreamPort;

  before(async () => {
    up = await startUpstream();
    upstreamPort = up.port;
    jg = await startJobgate({
      upstreamUrl: up.url,
      // One loop: the refusal comes back at once, and only one loop reads
      // all 20 requests in the turn before it arrives.
      flags: { upstream_timeout_ms: UPSTREAM_TIMEOUT_MS, upstream_connect_timeout_ms: 500, auth_ttl: 3600, workers: 1 },
    });
    for (const name of KEY_NAMES) {
      const proof = up.createJob({ org: 'A', status: 'in_progress' });
      const res = await jg.get(JOB_PATH(proof), { headers: keyHeader(up, name) });
      assert.equal(res.status, 200, `proof of ${name}`);
    }
  });

  after(async () => {
    if (jg && !jg.exited) {
      process.kill(jg.pid, 'SIGCONT');
    }
    await jg?.stopChecked();
    await up?.close();
  });

  test(`refused connection reaches all ${WAITERS} waiters`, async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await up.close();

    const coalescedBase = await jg.metric('jobgate_coalesced_total');
    const requestsBase = await jg.metric('jobgate_upstream_requests_total');

    // Every request must be in jobgate's socket buffers before it runs again.
    let flushed = 0;
    let allFlushed;
    const flushedPromise = new Promise((resolve) => { allFlushed = resolve; });
    const onRequest = (req) => req.on('finish', () => {
      flushed += 1;
      if (flushed === WAITERS) {
        allFlushed();
      }
    });
    process.kill(jg.pid, 'SIGSTOP');
    let pending;
    let resumedAt;
    let timer;
    try {
      pending = sendWaiters(jg, up, id, { onRequest });
      await Promise.race([
        flushedPromise,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`only ${flushed} requests were written`)), 10000);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      resumedAt = Date.now();
      process.kill(jg.pid, 'SIGCONT');
    }
    const results = await Promise.all(pending);

    assertRespondedBy(results, resumedAt, 'refused');
    for (const res of results) {
      assert.equal(res.status, 502);
      assert.deepEqual(res.json, { detail: 'upstream request failed' });
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; detail=upstream-connect(; collapsed)?$/);
    }
    assert.equal(await jg.metric('jobgate_coalesced_total'), coalescedBase + WAITERS - 1);
    assert.equal(await jg.metric('jobgate_upstream_requests_total'), requestsBase + 1);
    assertCollapsedOnce(results, 'refused');

    // The upstream comes back on the same port with the same job.
    up = await startUpstream({ port: upstreamPort });
    up.createJob({ org: 'A', status: 'completed', id });
    const again = await jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A1') });
    assert.equal(again.status, 200);
    assert.equal(again.headers['cache-status'], STORED, 'the refused fetch left something in the cache');
    assert.equal(up.jobCount(id), 1);
    const hit = await jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A2') });
    assert.equal(hit.headers['cache-status'], HIT);
    assert.equal(hit.body, up.jobBody(id));
    assert.equal(up.jobCount(id), 1);
  });
});
