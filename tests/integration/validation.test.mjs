// Job id validation. Every spelling of one UUID that the upstream accepts
// reaches the same cache entry. Text that is not a UUID gets a local 422 of
// type uuid_parsing, and a UUID of another version a local 422 of type
// uuid_version, both in FastAPI's error shape and without an upstream call.
// %00, an encoded slash and dot segments never reach the cache.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

describe('job id validation', () => {
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

  const getJob = (segment, name = 'A1') => jg.get(`/v2/org-jobs/${segment}`, { headers: keyHeader(up, name) });

  test('accepted spellings share one entry', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const upper = id.toUpperCase();
    const simple = id.replace(/-/g, '');
    const mixed = id.split('').map((c, i) => (i % 2 ? c.toUpperCase() : c)).join('');

    const first = await getJob(id);
    assert.equal(first.status, 200);
    assert.equal(first.headers['cache-status'], 'jobgate; fwd=miss; fwd-status=200; stored');

    const spellings = [
      upper,
      mixed,
      simple,
      simple.toUpperCase(),
      `{${id}}`,
      `%7B${id}%7D`,
      `%7b${upper}%7d`,
      `urn:uuid:${id}`,
      `urn:uuid:${upper}`,
      `${id}?job_id=${id}`,
    ];
    for (const spelling of spellings) {
      const res = await getJob(spelling);
      assert.equal(res.status, 200, spelling);
      assert.equal(res.headers['cache-status'], 'jobgate; hit', spelling);
      assert.equal(res.body, up.jobBody(id), spelling);
    }
    assert.equal(up.jobCount(id), 1);
    assert.equal(up.routeCount('job'), 1);
  });

  test('first miss with another spelling stores the same entry', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const miss = await getJob(`urn:uuid:${id.toUpperCase()}`);
    assert.equal(miss.status, 200);
    assert.equal(miss.headers['cache-status'], 'jobgate; fwd=miss; fwd-status=200; stored');
    const hit = await getJob(id);
    assert.equal(hit.headers['cache-status'], 'jobgate; hit');
    assert.equal(up.jobCount(id), 1);
  });

  test('invalid ids get 422 uuid_parsing locally', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const before_ = up.counts.total;
    const cases = [
      'not-a-uuid',
      '1234',
      'delete-by-metadata-x',
      `${id.slice(0, -1)}g`,
      id.slice(0, -1),
      `${id}0`,
      `URN:UUID:${id}`,
      `urn:uuid:${id.replace(/-/g, '')}`,
      `{${id.replace(/-/g, '')}}`,
      `{${id}`,
      `${id}}`,
      `${id.slice(0, 8)}${id.slice(9, 13)}-${id.slice(14)}`,
      `${id.slice(0, 9)}-${id.slice(9)}`,
      '..',
    ];
    for (const segment of cases) {
      const res = await getJob(segment);
      assert.equal(res.status, 422, segment);
      assert.match(res.headers['content-type'], /^application\/json/, segment);
      assert.ok(Array.isArray(res.json?.detail), `${segment}: ${res.body}`);
      const [detail] = res.json.detail;
      assert.equal(detail.type, 'uuid_parsing', segment);
      assert.deepEqual(detail.loc, ['path', 'job_id'], segment);
      assert.match(detail.msg, /^Input should be a valid UUID/, segment);
      assert.equal(detail.input, segment, segment);
    }
    assert.equal(up.counts.total, before_, 'no invalid id reached the upstream');
  });

  test('encoded spaces and NUL get 422 locally', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const before_ = up.counts.total;
    for (const segment of [`%20${id}`, `${id}%20`, `${id}%00`, '%00', `%00${id}`, `${id.slice(0, 35)}%00`]) {
      const res = await getJob(segment);
      assert.equal(res.status, 422, segment);
      assert.equal(res.json?.detail?.[0]?.type, 'uuid_parsing', segment);
      assert.deepEqual(res.json.detail[0].loc, ['path', 'job_id'], segment);
    }
    assert.equal(up.counts.total, before_);
  });

  test('non-v4 UUIDs get 422 uuid_version locally', async () => {
    const before_ = up.counts.total;
    const cases = [
      '6ba7b810-9dad-11d1-80b4-00c04fd430c8', // version 1
      '000003e8-7d1a-21ef-8f00-325096b39f47', // version 2
      '5df41881-3aed-3515-88a7-2f4a814cf09e', // version 3
      '2ed6657d-e927-568b-95e1-2665a8aea6a2', // version 5
      '1ef21d2f-1207-6660-8c4f-419efbd44d48', // version 6
      '01890a5d-ac96-774b-bcce-b302099a8057', // version 7
      'c6f1a2b3-4d5e-4f60-c718-293a4b5c6d7e', // version 4, variant c
      'c6f1a2b3-4d5e-4f60-0718-293a4b5c6d7e', // version 4, variant 0
      'c6f1a2b3-4d5e-4f60-7718-293a4b5c6d7e', // version 4, variant 7
      '00000000-0000-0000-0000-000000000000', // nil
    ];
    for (const segment of cases) {
      const res = await getJob(segment);
      assert.equal(res.status, 422, segment);
      assert.match(res.headers['content-type'], /^application\/json/, segment);
      assert.deepEqual(res.json, {
        detail: [{
          type: 'uuid_version',
          loc: ['path', 'job_id'],
          msg: 'UUID version 4 expected',
          input: segment,
          ctx: { expected_version: 4 },
        }],
      }, segment);
    }

    const simpleV1 = await getJob('6ba7b8109dad11d180b400c04fd430c8');
    assert.equal(simpleV1.status, 422);
    assert.equal(simpleV1.json.detail[0].type, 'uuid_version');
    assert.equal(up.counts.total, before_);
  });

  test('public alias validates too', async () => {
    const before_ = up.counts.total;
    const res = await jg.get('/public/v2/org-jobs/not-a-uuid', { headers: keyHeader(up, 'A1') });
    assert.equal(res.status, 422);
    assert.equal(res.json.detail[0].type, 'uuid_parsing');
    assert.equal(up.counts.total, before_);
  });

  test('422 without any credential', async () => {
    const before_ = up.counts.total;
    const res = await jg.get('/v2/org-jobs/not-a-uuid');
    assert.equal(res.status, 422);
    assert.equal(res.json.detail[0].type, 'uuid_parsing');
    assert.equal(up.counts.total, before_);
  });

  test('encoded slash and dot segments never hit', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const stored = await getJob(id);
    assert.equal(stored.headers['cache-status'], 'jobgate; fwd=miss; fwd-status=200; stored');

    const targets = [
      `/v2/org-jobs/${id}%2F`,
      `/v2/org-jobs/${id}%2f`,
      `/v2/org-jobs/%2F${id}`,
      `/v2/org-jobs/x%2F..%2F${id}`,
      `/v2/org-jobs/../org-jobs/${id}`,
      `/v2/org-jobs/./${id}`,
      `/v2/x/../org-jobs/${id}`,
      `/v2/org-jobs/${id}/..`,
      `/v2/org-jobs/${id}/.`,
      `/v2/org-jobs/${id}%00`,
    ];
    for (const target of targets) {
      const seenBefore = up.counts.total;
      const res = await jg.get(target, { headers: keyHeader(up, 'A1') });
      assert.notEqual(res.headers['cache-status'], 'jobgate; hit', target);
      assert.ok(!/stored/.test(res.headers['cache-status'] ?? ''), `${target} stored an entry`);
      if (res.body === up.jobBody(id)) {
        assert.equal(up.counts.total, seenBefore + 1, `${target} returned the job without asking the upstream`);
      }
    }
  });
});
