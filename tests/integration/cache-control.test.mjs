// Client Cache-Control on the job route. no-cache fetches from the upstream
// even when the entry exists, and refreshes it. only-if-cached gets 504 on a
// miss without an upstream call, and a normal hit otherwise.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, rawExchange, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

const HIT = 'jobgate; hit';

describe('client Cache-Control', () => {
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

  const getJob = (id, headers = {}, name = 'A1') => jg.get(JOB_PATH(id), { headers: { ...keyHeader(up, name), ...headers } });

  test('no-cache refreshes the entry', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await getJob(id);
    const hit = await getJob(id);
    assert.equal(hit.headers['cache-status'], HIT);
    const oldBody = up.jobBody(id);
    const oldEtag = hit.headers.etag;

    // The upstream's copy changes; only a forced fetch can see it.
    up.updateJob(id, { error_message: 'refreshed by the test', updated_at: '2031-01-01T00:00:00.000000Z' });
    const newBody = up.jobBody(id);
    assert.notEqual(newBody, oldBody);

    const stale = await getJob(id);
    assert.equal(stale.body, oldBody, 'a plain request is still served the stored copy');

    const forced = await getJob(id, { 'Cache-Control': 'no-cache' });
    assert.equal(forced.status, 200);
    assert.equal(forced.body, newBody);
    assert.equal(forced.headers['cache-status'], 'jobgate; fwd=request; fwd-status=200; stored');
    assert.equal(up.jobCount(id), 2);

    const refreshed = await getJob(id);
    assert.equal(refreshed.headers['cache-status'], HIT);
    assert.equal(refreshed.body, newBody);
    assert.notEqual(refreshed.headers.etag, oldEtag, 'the ETag follows the body');
    assert.equal(up.jobCount(id), 2);
  });

  test('no-cache on a miss', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const res = await getJob(id, { 'Cache-Control': 'no-cache' });
    assert.equal(res.status, 200);
    assert.equal(res.headers['cache-status'], 'jobgate; fwd=request; fwd-status=200; stored');
    const hit = await getJob(id);
    assert.equal(hit.headers['cache-status'], HIT);
    assert.equal(up.jobCount(id), 1);
  });

  test('no-cache answer that is not terminal leaves the entry', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await getJob(id);
    up.addFault({ job: id, kind: 'status', status: 503 });
    const failed = await getJob(id, { 'Cache-Control': 'no-cache' });
    assert.equal(failed.status, 503);
    assert.equal(up.jobCount(id), 2);
    const hit = await getJob(id);
    assert.equal(hit.headers['cache-status'], HIT, 'a failed refresh keeps the stored copy');
    assert.equal(hit.body, up.jobBody(id));
  });

  test('only-if-cached on a miss gives 504', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const before_ = up.counts.total;
    const res = await getJob(id, { 'Cache-Control': 'only-if-cached' });
    assert.equal(res.status, 504);
    assert.match(res.headers['content-type'], /^application\/json/);
    assert.equal(typeof res.json?.detail, 'string');
    assert.equal(res.headers['cache-status'], 'jobgate; fwd=miss; detail=only-if-cached');
    assert.equal(up.counts.total, before_, 'no upstream call');
    assert.equal(up.jobCount(id), 0);
  });

  test('only-if-cached on a hit gives 200', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await getJob(id);
    const res = await getJob(id, { 'Cache-Control': 'only-if-cached' });
    assert.equal(res.status, 200);
    assert.equal(res.headers['cache-status'], HIT);
    assert.equal(res.body, up.jobBody(id));
    assert.equal(up.jobCount(id), 1);
  });

  test('only-if-cached with an unproven key gives 504', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await getJob(id);
    const res = await getJob(id, { 'Cache-Control': 'only-if-cached' }, 'A4');
    assert.equal(res.status, 504);
    assert.equal(res.headers['cache-status'], 'jobgate; fwd=miss; detail=only-if-cached');
    assert.equal(up.jobCount(id), 1);
  });

  test('directives inside a list are recognised', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const before_ = up.counts.total;
    const res = await getJob(id, { 'Cache-Control': 'max-stale=10, only-if-cached' });
    assert.equal(res.status, 504);
    assert.equal(up.counts.total, before_);

    await getJob(id);
    const forced = await getJob(id, { 'Cache-Control': 'max-age=0, no-cache' });
    assert.match(forced.headers['cache-status'], /^jobgate; fwd=request;/);
    assert.equal(up.jobCount(id), 2);
  });

  test('pipelined no-cache behind a miss fetches again', async () => {
    const proof = up.createJob({ org: 'A', status: 'in_progress' });
    assert.equal((await getJob(proof)).status, 200);
    const id = up.createJob({ org: 'A', status: 'completed' });
    const request = (extra) => `GET ${JOB_PATH(id)} HTTP/1.1\r\nHost: jobgate\r\n`
      + `Galileo-API-Key: ${up.keys.A1}\r\n${extra}\r\n`;

    // The second request is parsed as soon as the first is answered, while
    // that answer is still kept for misses: no-cache must not take it.
    const res = await rawExchange(jg.port, request('') + request('Cache-Control: no-cache\r\nConnection: close\r\n'));
    const answers = res.data.split(/(?=HTTP\/1\.1 )/);
    assert.equal(answers.length, 2, res.data);
    assert.match(answers[1], /\r\nCache-Status: jobgate; fwd=request; fwd-status=200; stored\r\n/i);
    assert.equal(up.jobCount(id), 2);
  });
});
