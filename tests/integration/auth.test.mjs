// Who may read a cached job. Another key of the same organization may, once
// the upstream has proven it with a 200 for a job of that organization. A key
// of another organization, an unknown key or a request without a credential
// never may. A 401 from the upstream makes jobgate forget a credential at
// once, and proof expires after auth_ttl. With share_scope=credential an
// entry is served only to the credential that fetched it. All three
// credential headers count: Galileo-API-Key, Splunk-AO-API-Key and
// Authorization: Bearer.

import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

const STORED = 'jobgate; fwd=miss; fwd-status=200; stored';
const HIT = 'jobgate; hit';

describe('who may read', () => {
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

  const getJob = (id, headers) => jg.get(JOB_PATH(id), { headers });

  test('proven key of the same org gets a hit', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const y = up.createJob({ org: 'A', status: 'in_progress' });

    const stored = await getJob(x, keyHeader(up, 'A1'));
    assert.equal(stored.headers['cache-status'], STORED);

    const proof = await getJob(y, keyHeader(up, 'A2'));
    assert.equal(proof.status, 200);
    assert.equal(up.jobCount(y), 1);

    const hit = await getJob(x, keyHeader(up, 'A2'));
    assert.equal(hit.status, 200);
    assert.equal(hit.headers['cache-status'], HIT);
    assert.equal(hit.body, up.jobBody(x));
    assert.equal(up.jobCount(x), 1);
  });

  test('unproven key of the same org goes upstream', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    await getJob(x, keyHeader(up, 'A1'));
    assert.equal(up.jobCount(x), 1);

    const res = await getJob(x, keyHeader(up, 'A4'));
    assert.equal(res.status, 200);
    assert.notEqual(res.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);
    const seen = up.requests.filter((r) => r.jobId === x).at(-1);
    assert.equal(seen.headers['galileo-api-key'], up.keys.A4, 'the upstream judged A4 itself');
  });

  test('key of another org never gets the entry', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const bJob = up.createJob({ org: 'B', status: 'completed' });
    await getJob(x, keyHeader(up, 'A1'));
    assert.equal(up.jobCount(x), 1);

    const denied = await getJob(x, keyHeader(up, 'B1'));
    assert.equal(denied.status, 404);
    assert.deepEqual(denied.json, { detail: 'Job not found' });
    assert.equal(up.jobCount(x), 2);

    // B1 proven for org B still does not read org A's entry.
    const own = await getJob(bJob, keyHeader(up, 'B1'));
    assert.equal(own.status, 200);
    const again = await getJob(x, keyHeader(up, 'B1'));
    assert.equal(again.status, 404);
    assert.notEqual(again.body, up.jobBody(x));
    assert.equal(up.jobCount(x), 3);

    // The 404 did not evict A's entry.
    const aHit = await getJob(x, keyHeader(up, 'A1'));
    assert.equal(aHit.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 3);
  });

  test('403 from the upstream is relayed', async () => {
    const up403 = await startUpstream({ crossOrgStatus: 403 });
    const jg403 = await startJobgate({ upstreamUrl: up403.url });
    try {
      const x = up403.createJob({ org: 'A', status: 'completed' });
      await jg403.get(JOB_PATH(x), { headers: keyHeader(up403, 'A1') });
      const res = await jg403.get(JOB_PATH(x), { headers: keyHeader(up403, 'C1') });
      assert.equal(res.status, 403);
      assert.equal(res.json.detail, 'Not authorized to access this job');
      assert.equal(up403.jobCount(x), 2);
    } finally {
      await jg403.stopChecked();
      await up403.close();
    }
  });

  test('unknown key and no credential go upstream', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    await getJob(x, keyHeader(up, 'A1'));
    assert.equal(up.jobCount(x), 1);

    const unknown = await getJob(x, { 'Galileo-API-Key': 'gk_unknown_0000000000000000000000000000' });
    assert.equal(unknown.status, 401);
    assert.deepEqual(unknown.json, { detail: 'Invalid API key' });
    assert.equal(up.jobCount(x), 2);

    const none = await getJob(x, {});
    assert.equal(none.status, 401);
    assert.deepEqual(none.json, { detail: 'Not authenticated' });
    assert.equal(up.jobCount(x), 3);

    const badBearer = await getJob(x, { Authorization: 'Bearer not.a.token' });
    assert.equal(badBearer.status, 401);
    assert.equal(up.jobCount(x), 4);
  });

  test('Splunk-AO-API-Key and Bearer tokens are credentials', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const y = up.createJob({ org: 'A', status: 'in_progress' });
    await getJob(x, keyHeader(up, 'A1'));

    const splunk = { 'Splunk-AO-API-Key': up.keys.A3 };
    await getJob(y, splunk);
    const splunkHit = await getJob(x, splunk);
    assert.equal(splunkHit.headers['cache-status'], HIT);

    // Log in through jobgate, as the SDKs do.
    const login = await jg.request('/login/api_key', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ api_key: up.keys.A2 }),
    });
    assert.equal(login.status, 200);
    const token = login.json.access_token;
    assert.ok(token);

    const bearer = { Authorization: `Bearer ${token}` };
    const proof = await getJob(y, bearer);
    assert.equal(proof.status, 200);
    const seen = up.requests.filter((r) => r.jobId === y).at(-1);
    assert.equal(seen.headers.authorization, `Bearer ${token}`);
    const bearerHit = await getJob(x, bearer);
    assert.equal(bearerHit.headers['cache-status'], HIT);

    // Scheme case and surrounding whitespace do not change the credential.
    const oddSpelling = await getJob(x, { Authorization: `  bEaReR ${token}  ` });
    assert.equal(oddSpelling.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 1);
  });

  test('Galileo-API-Key wins over Authorization', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const y = up.createJob({ org: 'A', status: 'in_progress' });
    await getJob(x, keyHeader(up, 'A1'));
    const tokenB = up.login('B1');

    // Proven through the key header, the request is the key's, not B's token's.
    await getJob(y, { ...keyHeader(up, 'A1'), Authorization: `Bearer ${tokenB}` });
    const hit = await getJob(x, { ...keyHeader(up, 'A1'), Authorization: `Bearer ${tokenB}` });
    assert.equal(hit.headers['cache-status'], HIT);

    // The token alone is unproven and of org B.
    const tokenOnly = await getJob(x, { Authorization: `Bearer ${tokenB}` });
    assert.equal(tokenOnly.status, 404);
  });

  test('401 from the upstream forgets the credential', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const z = up.createJob({ org: 'A', status: 'in_progress' });
    const y = up.createJob({ org: 'A', status: 'in_progress' });

    // A1 and A2 both proven for org A; x is cached.
    await getJob(x, keyHeader(up, 'A1'));
    await getJob(y, keyHeader(up, 'A2'));
    const warm = await getJob(x, keyHeader(up, 'A1'));
    assert.equal(warm.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 1);

    up.revokeKey('A1');
    try {
      const revoked = await getJob(z, keyHeader(up, 'A1'));
      assert.equal(revoked.status, 401);

      const afterRevoke = await getJob(x, keyHeader(up, 'A1'));
      assert.equal(afterRevoke.status, 401, 'a forgotten credential is not served from the cache');
      assert.equal(up.jobCount(x), 2);

      // Other credentials of the org keep their proof and the entry.
      const other = await getJob(x, keyHeader(up, 'A2'));
      assert.equal(other.headers['cache-status'], HIT);
      assert.equal(up.jobCount(x), 2);
    } finally {
      up.restoreKey('A1');
    }

    // Restored at the upstream, A1 must be proven again before a hit.
    const reproof = await getJob(x, keyHeader(up, 'A1'));
    assert.equal(reproof.status, 200);
    assert.equal(up.jobCount(x), 3);
    const hitAgain = await getJob(x, keyHeader(up, 'A1'));
    assert.equal(hitAgain.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 3);
  });
});

describe('auth_ttl', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url, flags: { auth_ttl: 1 } });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  test('proof expires after auth_ttl', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const stored = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(stored.headers['cache-status'], STORED);
    const hit = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(hit.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 1);

    // This waits for the expiry itself, not for another process. A proof
    // lives auth_ttl seconds to the millisecond.
    await delay(1100);

    const expired = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(expired.status, 200);
    assert.notEqual(expired.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);

    const reproven = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(reproven.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);
  });
});

describe('share_scope=credential', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url, flags: { share_scope: 'credential' } });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  test('entry is served only to its fetcher', async () => {
    const x = up.createJob({ org: 'A', status: 'completed' });
    const y = up.createJob({ org: 'A', status: 'in_progress' });

    await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    const a1 = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A1') });
    assert.equal(a1.headers['cache-status'], HIT);
    await jg.get(JOB_PATH(y), { headers: keyHeader(up, 'A2') });
    assert.equal(up.jobCount(x), 1);

    const a2 = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A2') });
    assert.equal(a2.status, 200);
    assert.notEqual(a2.headers['cache-status'], HIT);
    assert.equal(up.jobCount(x), 2);

    const a2Again = await jg.get(JOB_PATH(x), { headers: keyHeader(up, 'A2') });
    assert.equal(a2Again.headers['cache-status'], HIT, 'A2 fetched it itself now');
    assert.equal(up.jobCount(x), 2);
  });
});
