// Cache rules. A 200 is stored only when its top-level status is terminal,
// its id is the requested job and its organization_id is a UUID. It must
// also be one complete JSON object without duplicated key fields, fit in
// max_body_bytes and carry no Cache-Control no-store or private. Everything
// else is relayed as the upstream sent it and fetched again next time.
// Entries expire after terminal_ttl and survive a restart, after which the
// credential must be proven again.

import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, makeTempDir, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

const STORED = 'jobgate; fwd=miss; fwd-status=200; stored';
const HIT = 'jobgate; hit';
const NOT_STORED = /^jobgate; fwd=miss; fwd-status=200; detail=[a-z0-9-]+$/;

describe('cache rules', () => {
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

  const getJob = (id, name = 'A1', headers = {}) => jg.get(JOB_PATH(id), { headers: { ...keyHeader(up, name), ...headers } });

  // Fetches id twice and checks that both went upstream and both relayed
  // expectedBody. Returns the first response.
  async function assertNotCached(id, expectedBody, detail) {
    const before_ = up.jobCount(id);
    const first = await getJob(id);
    assert.equal(first.status, 200);
    assert.equal(first.body, expectedBody);
    assert.match(first.headers['cache-status'], NOT_STORED);
    if (detail) {
      assert.equal(first.headers['cache-status'], `jobgate; fwd=miss; fwd-status=200; detail=${detail}`);
    }
    const second = await getJob(id);
    assert.equal(second.status, 200);
    assert.notEqual(second.headers['cache-status'], HIT);
    assert.equal(up.jobCount(id), before_ + 2);
    return first;
  }

  async function assertCached(id) {
    const first = await getJob(id);
    assert.equal(first.status, 200);
    assert.equal(first.headers['cache-status'], STORED);
    const second = await getJob(id);
    assert.equal(second.headers['cache-status'], HIT);
    assert.equal(second.body, up.jobBody(id));
    assert.equal(up.jobCount(id), 1);
  }

  for (const status of ['completed', 'failed', 'error', 'cancelled']) {
    test(`terminal status ${status} is stored`, async () => {
      const id = up.createJob({ org: 'A', status, errorMessage: status === 'completed' ? null : 'boom' });
      await assertCached(id);
    });
  }

  for (const status of ['unstarted', 'in_progress', 'processed', 'pending', 'processing', 'COMPLETED', 'Completed', 'done', '']) {
    test(`status ${JSON.stringify(status)} is not stored`, async () => {
      const id = up.createJob({ org: 'A', status });
      await assertNotCached(id, up.jobBody(id), 'not-terminal');
    });
  }

  test('job lifecycle is cached only at the end', async () => {
    const id = up.createJob({ org: 'A', status: 'unstarted' });
    const seen = [];
    for (let step = 0; step < 4; step++) {
      const res = await getJob(id);
      assert.equal(res.status, 200);
      seen.push(res.json.status);
      if (step < 3) {
        assert.match(res.headers['cache-status'], NOT_STORED, res.json.status);
        up.advance(id);
      } else {
        assert.equal(res.headers['cache-status'], STORED);
      }
    }
    assert.deepEqual(seen, ['unstarted', 'in_progress', 'processed', 'completed']);
    const hit = await getJob(id);
    assert.equal(hit.headers['cache-status'], HIT);
    assert.equal(hit.json.status, 'completed');
    assert.equal(up.jobCount(id), 4);
  });

  test('status inside request_data is data', async () => {
    const id = up.createJob({
      org: 'A',
      status: 'in_progress',
      requestData: { metadata_key: 'status', metadata_value: 'completed', status: 'completed', nested: { status: 'completed' } },
    });
    await assertNotCached(id, up.jobBody(id), 'not-terminal');
  });

  test('status only inside request_data', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'status-only-in-request-data', times: 2 });
    const first = await getJob(id);
    assert.equal(first.status, 200);
    assert.equal(first.json.status, undefined);
    assert.equal(first.json.request_data.status, 'completed');
    assert.match(first.headers['cache-status'], NOT_STORED);
    const second = await getJob(id);
    assert.notEqual(second.headers['cache-status'], HIT);
    assert.equal(up.jobCount(id), 2);
  });

  test('organization_id inside request_data is data', async () => {
    const id = up.createJob({
      org: 'A',
      status: 'completed',
      requestData: { metadata_key: 'k', metadata_value: 'v', organization_id: 'c1d2e3f4-a5b6-4c7d-9e8f-0a1b2c3d4e5a' },
    });
    await assertCached(id);
    // Org C's key must not read it just because request_data names org C.
    const c = up.createJob({ org: 'C', status: 'in_progress' });
    await getJob(c, 'C1');
    const other = await getJob(id, 'C1');
    assert.equal(other.status, 404);
  });

  test('body with another id is not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const otherId = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'other-id', otherId, times: 2 });
    const first = await getJob(id);
    assert.equal(first.status, 200);
    assert.equal(first.json.id, otherId, 'relayed as the upstream sent it');
    assert.equal(first.headers['cache-status'], 'jobgate; fwd=miss; fwd-status=200; detail=id-mismatch');
    const second = await getJob(id);
    assert.notEqual(second.headers['cache-status'], HIT);
    assert.equal(up.jobCount(id), 2);

    // Nor was it stored under the id the body names.
    const named = await getJob(otherId);
    assert.equal(named.headers['cache-status'], STORED);
    assert.equal(up.jobCount(otherId), 1);
  });

  test('two JSON objects back to back are relayed, not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'concat', times: 2 });
    await assertNotCached(id, up.jobBody(id) + up.jobBody(id), 'trailing-data');
  });

  test('trailing whitespace is fine', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.setRawBody(id, `${up.jobBody(id)} \r\n\t\n`);
    await assertCached(id);
  });

  test('trailing garbage after the object is not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.setRawBody(id, `${up.jobBody(id)}x`);
    await assertNotCached(id, up.jobBody(id));
  });

  test('incomplete JSON is not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.setRawBody(id, up.jobBody(id).slice(0, -1));
    await assertNotCached(id, up.jobBody(id));
  });

  test('duplicate status field is not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'duplicate-status', times: 2 });
    const expected = `{"status":"in_progress",${up.jobBody(id).slice(1)}`;
    await assertNotCached(id, expected);
  });

  test('duplicate id field is not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.setRawBody(id, `{"id":"${id}",${up.jobBody(id).slice(1)}`);
    await assertNotCached(id, up.jobBody(id));
  });

  test('organization_id that is not a UUID is not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.addFault({ job: id, kind: 'org-not-uuid', times: 2 });
    const first = await assertNotCached(id, up.jobBody(id).replace(up.orgs.A, 'org-a'));
    assert.equal(first.json.organization_id, 'org-a');
  });

  test('top-level array is not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.setRawBody(id, `[${up.jobBody(id)}]`);
    await assertNotCached(id, up.jobBody(id));
  });

  for (const value of ['no-store', 'private', 'private, max-age=60', 'max-age=60, no-store']) {
    test(`Cache-Control ${value} from upstream is not stored`, async () => {
      const id = up.createJob({ org: 'A', status: 'completed' });
      up.addFault({ job: id, kind: 'no-store', value, times: 2 });
      const first = await assertNotCached(id, up.jobBody(id), value.includes('no-store') ? 'no-store' : undefined);
      assert.equal(first.headers['cache-control'], value, 'relayed');
    });
  }

  test('body above max_body_bytes is relayed, not stored', async () => {
    const id = up.createJob({
      org: 'A',
      status: 'completed',
      requestData: { metadata_key: 'k', metadata_value: 'x'.repeat(70 * 1024) },
    });
    assert.ok(up.jobBody(id).length > 65536);
    await assertNotCached(id, up.jobBody(id));
  });

  test('escaped status is decoded or not stored', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    up.setRawBody(id, up.jobBody(id).replace('"status":"completed"', '"status":"complet\\u0065d"'));
    const first = await getJob(id);
    assert.equal(first.status, 200);
    assert.equal(first.body, up.jobBody(id));
    assert.match(first.headers['cache-status'], /^jobgate; fwd=miss; fwd-status=200; (stored|detail=[a-z0-9-]+)$/);

    // An escaped "in_progress" must never pass for a terminal status.
    const running = up.createJob({ org: 'A', status: 'in_progress' });
    up.setRawBody(running, up.jobBody(running).replace('"status":"in_progress"', '"status":"in\\u005fprogress"'));
    await assertNotCached(running, up.jobBody(running));
  });

  test('upstream 404 is not stored', async () => {
    const missing = '0d9f3c1e-2b4a-4c6d-8e7f-9a0b1c2d3e4f';
    for (let i = 1; i <= 2; i++) {
      const res = await getJob(missing);
      assert.equal(res.status, 404);
      assert.match(res.headers['cache-status'], /^jobgate; fwd=miss; fwd-status=404(; detail=[a-z0-9-]+)?$/);
      assert.equal(up.jobCount(missing), i);
    }
  });
});

describe('terminal_ttl', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url, flags: { terminal_ttl: 1 } });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  test('entry expires after terminal_ttl', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const stored = await jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A1') });
    assert.equal(stored.headers['cache-status'], STORED);
    const hit = await jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A1') });
    assert.equal(hit.headers['cache-status'], HIT);

    // Waits for the expiry itself: with whole-second times, an entry with
    // a TTL of 1 lives between one and two seconds.
    await delay(2100);

    const expired = await jg.get(JOB_PATH(id), { headers: keyHeader(up, 'A1') });
    assert.equal(expired.status, 200);
    // RFC 9211 names an expired entry fwd=stale; a plain miss is also right.
    assert.match(expired.headers['cache-status'], /^jobgate; fwd=(stale|miss); fwd-status=200; stored$/, 'refetched and stored again');
    assert.equal(up.jobCount(id), 2);
  });
});

describe('restart', () => {
  test('entries survive a restart', async () => {
    const up = await startUpstream();
    const cacheDir = makeTempDir('jg-restart-');
    let jg = await startJobgate({ upstreamUrl: up.url, cacheDir });
    try {
      const x = up.createJob({ org: 'A', status: 'completed' });
      const y = up.createJob({ org: 'A', status: 'in_progress' });
      const stored = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
      assert.equal(stored.headers['cache-status'], STORED);
      assert.equal(up.jobCount(x), 1);
      assert.equal(await jg.stop('SIGTERM'), 0, jg.stderrTail());

      jg = await startJobgate({ upstreamUrl: up.url, cacheDir });

      // The principal table starts empty: A1 must be proven again, here
      // through another job, so that the hit below can only come from LMDB.
      const proof = await jg.get(JOB_PATH(y), { headers: keyHeader(up, 'A1') });
      assert.equal(proof.status, 200);
      const hit = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
      assert.equal(hit.status, 200);
      assert.equal(hit.headers['cache-status'], HIT);
      assert.equal(hit.body, up.jobBody(x));
      assert.equal(up.jobCount(x), 1, 'served from the entry written before the restart');

      // An unproven key still goes upstream after the restart.
      const unproven = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A3') });
      assert.equal(unproven.status, 200);
      assert.notEqual(unproven.headers['cache-status'], HIT);
      assert.equal(up.jobCount(x), 2);
    } finally {
      await jg.stopChecked();
      await up.close();
    }
  });

  test('first request after restart is a miss', async () => {
    const up = await startUpstream();
    const cacheDir = makeTempDir('jg-restart-');
    let jg = await startJobgate({ upstreamUrl: up.url, cacheDir });
    try {
      const x = up.createJob({ org: 'A', status: 'completed' });
      await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
      const hit = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
      assert.equal(hit.headers['cache-status'], HIT);
      assert.equal(await jg.stop('SIGINT'), 0, jg.stderrTail());

      jg = await startJobgate({ upstreamUrl: up.url, cacheDir });
      const first = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
      assert.equal(first.status, 200);
      assert.notEqual(first.headers['cache-status'], HIT, 'proof does not survive a restart');
      assert.equal(up.jobCount(x), 2);
      const second = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
      assert.equal(second.headers['cache-status'], HIT);
      assert.equal(up.jobCount(x), 2);
    } finally {
      await jg.stopChecked();
      await up.close();
    }
  });
});
