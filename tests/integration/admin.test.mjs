// Admin listener: /healthz, /readyz, Prometheus /metrics with the documented
// counters moving as requests are served, and cache purge by job and by
// organization (the next request after a purge goes upstream). The admin
// routes are not served on the proxy port, and admin_listen="" disables the
// listener.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, startJobgate } from './harness.mjs';
import { ORGS, startUpstream } from './upstream.mjs';

const METRICS = [
  'jobgate_requests_total',
  'jobgate_cache_hits_total',
  'jobgate_cache_misses_total',
  'jobgate_upstream_requests_total',
  'jobgate_coalesced_total',
  'jobgate_cache_writes_total',
  'jobgate_cache_write_dropped_total',
];

describe('admin listener', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  const getJob = (id, name = 'A1') => jg.get(JOB_PATH(id), { headers: keyHeader(up, name) });

  test('healthz and readyz', async () => {
    const health = await jg.admin('/healthz');
    assert.equal(health.status, 200);
    assert.equal(health.body.trim(), 'ok');
    const ready = await jg.admin('/readyz');
    assert.equal(ready.status, 200);
  });

  test('metrics are Prometheus text with the documented counters', async () => {
    const res = await jg.admin('/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'], /^text\/plain/);
    for (const name of METRICS) {
      assert.match(res.body, new RegExp(`^${name}(\\{[^}]*\\})? \\d+`, 'm'), `${name} missing`);
    }
  });

  test('counters follow requests', async () => {
    const before_ = await jg.metrics();
    const id = up.createJob({ org: 'A', status: 'completed' });
    await getJob(id);
    await getJob(id);
    await getJob(id);
    const after_ = await jg.metrics();
    const delta = (name) => (after_.get(name) ?? 0) - (before_.get(name) ?? 0);
    assert.equal(delta('jobgate_cache_hits_total'), 2);
    assert.equal(delta('jobgate_cache_misses_total'), 1);
    assert.equal(delta('jobgate_upstream_requests_total'), 1);
    assert.equal(delta('jobgate_cache_writes_total'), 1);
    assert.equal(delta('jobgate_cache_write_dropped_total'), 0);
    assert.ok(delta('jobgate_requests_total') >= 3, 'requests counted');
  });

  test('purge by job', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await getJob(id);
    assert.equal((await getJob(id)).headers['cache-status'], 'jobgate; hit');

    const purge = await jg.admin(`/cache/jobs/${id}`, { method: 'DELETE' });
    assert.equal(purge.status, 200);
    assert.deepEqual(purge.json, { purged: 1 });

    const after_ = await getJob(id);
    assert.equal(after_.headers['cache-status'], 'jobgate; fwd=miss; fwd-status=200; stored');
    assert.equal(up.jobCount(id), 2);

    const again = await jg.admin('/cache/jobs/0d9f3c1e-2b4a-4c6d-8e7f-9a0b1c2d3e4f', { method: 'DELETE' });
    assert.equal(again.status, 200);
    assert.deepEqual(again.json, { purged: 0 });
  });

  test('purge by organization', async () => {
    const a1 = up.createJob({ org: 'A', status: 'completed' });
    const a2 = up.createJob({ org: 'A', status: 'failed' });
    const b1 = up.createJob({ org: 'B', status: 'completed' });
    await getJob(a1);
    await getJob(a2);
    await getJob(b1, 'B1');

    const purge = await jg.admin(`/cache/orgs/${ORGS.A}`, { method: 'DELETE' });
    assert.equal(purge.status, 200);
    assert.ok(purge.json.purged >= 2, `purged ${purge.json.purged}`);

    assert.notEqual((await getJob(a1)).headers['cache-status'], 'jobgate; hit');
    assert.notEqual((await getJob(a2)).headers['cache-status'], 'jobgate; hit');
    assert.equal((await getJob(b1, 'B1')).headers['cache-status'], 'jobgate; hit', 'org B untouched');
    assert.equal(up.jobCount(b1), 1);
  });

  test('admin routes are not on the proxy port', async () => {
    const before_ = up.counts.total;
    const res = await jg.get('/metrics');
    assert.equal(res.headers['cache-status'], 'jobgate; fwd=bypass', 'passed to the upstream like any path');
    assert.equal(res.status, 404);
    assert.equal(up.counts.total, before_ + 1);
  });
});

describe('admin listener disabled', () => {
  test('empty admin_listen starts without it', async () => {
    const up = await startUpstream();
    const jg = await startJobgate({ upstreamUrl: up.url, flags: { admin_listen: '' } });
    try {
      assert.equal(jg.adminPort, undefined);
      assert.ok(!jg.lines.some((l) => / admin listening on /.test(l)));
      const res = await jg.get('/healthcheck');
      assert.equal(res.status, 200);
    } finally {
      await jg.stopChecked();
      await up.close();
    }
  });
});
