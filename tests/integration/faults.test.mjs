// Upstream faults. A refused connection gives a quick 502 with a JSON detail.
// An upstream slower than upstream_timeout_ms (held, or dripping its body)
// gives 504. A reset, a reset in the middle of the body, a truncated body or
// bytes that are not HTTP give 502. 5xx and 429 are relayed with their
// status, body and Retry-After. None of these is cached, so the next request
// goes upstream again and stores the good response.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, closedPort, keyHeader, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

const STORED = 'jobgate; fwd=miss; fwd-status=200; stored';

describe('upstream down', () => {
  let jg;

  before(async () => {
    const port = await closedPort();
    jg = await startJobgate({ upstreamUrl: `http://127.0.0.1:${port}` });
  });

  after(async () => {
    await jg?.stopChecked();
  });

  test('connection refused gives 502 quickly', async () => {
    const started = Date.now();
    const res = await jg.get(JOB_PATH('5b1e3c2a-8d4f-4e6a-9b7c-0d1e2f3a4b5c'), { headers: { 'Galileo-API-Key': 'gk_any' } });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 502);
    assert.match(res.headers['content-type'], /^application\/json/);
    assert.match(res.json?.detail ?? '', /^upstream/);
    assert.ok(elapsed < 2000, `took ${elapsed} ms for a refused connection`);
  });

  test('pass-through gets 502 too', async () => {
    const res = await jg.get('/healthcheck');
    assert.equal(res.status, 502);
    assert.match(res.json?.detail ?? '', /^upstream/);
  });
});

describe('upstream faults', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url, flags: { upstream_timeout_ms: 500, upstream_connect_timeout_ms: 200 } });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  const getJob = (id) => jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A1') });

  // After a fault, the same job without faults is fetched and stored: the
  // fault left nothing in the cache.
  async function assertRecovered(id, countBefore) {
    const res = await getJob(id);
    assert.equal(res.status, 200);
    assert.equal(res.headers['cache-status'], STORED);
    assert.equal(res.body, up.jobBody(id));
    assert.equal(up.jobCount(id), countBefore + 1);
  }

  test('held upstream times out with 504', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const gate = up.hold({ job: id });
    try {
      const res = await getJob(id);
      assert.equal(res.status, 504);
      assert.deepEqual(res.json, { detail: 'upstream timed out' });
      assert.equal(gate.arrivals, 1);
    } finally {
      gate.release();
    }
    await assertRecovered(id, 1);
  });

  test('slow drip body times out with 504', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'drip', intervalMs: 50 });
    const res = await getJob(id);
    assert.equal(res.status, 504);
    assert.deepEqual(res.json, { detail: 'upstream timed out' });
    await assertRecovered(id, 1);
  });

  test('endless body times out with 504', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'drip', endless: true, intervalMs: 5 });
    const res = await getJob(id);
    assert.equal(res.status, 504);
    await assertRecovered(id, 1);
  });

  // libcurl retries a request once on a fresh connection when a reused one
  // fails before any response byte, so the fault stays until the response
  // is in.
  for (const kind of ['reset', 'reset-mid-body', 'truncate', 'garbage']) {
    test(`${kind} gives 502`, async () => {
      const id = up.createJob({ org: 'A', status: 'completed' });
      const fault = up.addFault({ job: id, kind, times: Infinity });
      const res = await getJob(id);
      fault.remaining = 0;
      assert.equal(res.status, 502);
      assert.match(res.headers['content-type'], /^application\/json/);
      assert.match(res.json?.detail ?? '', /^upstream/);
      const tries = up.jobCount(id);
      assert.ok(tries >= 1, `upstream saw ${tries} tries`);
      assert.ok(tries <= 2, `upstream saw ${tries} tries`);
      await assertRecovered(id, tries);
    });
  }

  test('POST is not repeated after a reset', async () => {
    // Warm a pooled connection so that the reset hits a reused one.
    await jg.get('/healthcheck');
    const fault = up.addFault({ route: 'echo', method: 'POST', kind: 'reset', times: Infinity });
    const before_ = up.count({ route: 'echo', method: 'POST' });
    const res = await jg.request('/echo/once', { method: 'POST', body: 'must-arrive-once' });
    fault.remaining = 0;
    assert.equal(res.status, 502);
    assert.equal(up.count({ route: 'echo', method: 'POST' }), before_ + 1, 'a non-idempotent request was sent twice');
  });

  for (const status of [500, 502, 503]) {
    test(`upstream ${status} is relayed`, async () => {
      const id = up.createJob({ org: 'A', status: 'completed' });
      up.addFault({ job: id, kind: 'status', status, detail: `scripted ${status}` });
      const res = await getJob(id);
      assert.equal(res.status, status);
      assert.deepEqual(res.json, { detail: `scripted ${status}` });
      assert.match(res.headers['cache-status'], new RegExp(`^jobgate; fwd=miss; fwd-status=${status}(; detail=[a-z0-9-]+)?$`));
      await assertRecovered(id, 1);
    });
  }

  test('429 keeps Retry-After', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'rate-limit', retryAfter: 13 });
    const res = await getJob(id);
    assert.equal(res.status, 429);
    assert.equal(res.headers['retry-after'], '13');
    assert.deepEqual(res.json, { detail: 'Too Many Requests' });
    await assertRecovered(id, 1);
  });

  test('pass-through faults', async () => {
    const resetFault = up.addFault({ route: 'healthcheck', kind: 'reset', times: Infinity });
    const reset = await jg.get('/healthcheck');
    resetFault.remaining = 0;
    assert.equal(reset.status, 502);

    up.addFault({ route: 'healthcheck', kind: 'rate-limit', retryAfter: 3 });
    const limited = await jg.get('/healthcheck');
    assert.equal(limited.status, 429);
    assert.equal(limited.headers['retry-after'], '3');

    const gate = up.hold({ route: 'healthcheck' });
    try {
      const slow = await jg.get('/healthcheck');
      assert.equal(slow.status, 504);
    } finally {
      gate.release();
    }

    const ok = await jg.get('/healthcheck');
    assert.equal(ok.status, 200);
  });

  test('jobgate still serves after the faults', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await assertRecovered(id, 0);
    const health = await jg.admin('/healthz');
    assert.equal(health.status, 200);
    assert.equal(jg.exited, false);
  });
});
