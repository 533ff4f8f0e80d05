// Routes. The cached job route and its /public alias share one entry (miss,
// hit, Age, ETag, If-None-Match). The query string is forwarded but ignored
// for the cache key. Everything else is passed through with its headers and
// body and never cached: POST with a body, other paths and methods, and HEAD
// or a trailing slash on the job route.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, PUBLIC_JOB_PATH, curl, keyHeader, startJobgate } from './harness.mjs';
import { startUpstream } from './upstream.mjs';

const STORED = 'jobgate; fwd=miss; fwd-status=200; stored';
const HIT = 'jobgate; hit';
const BYPASS = 'jobgate; fwd=bypass';

describe('routes', () => {
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

  const getJob = (target, name = 'A1', headers = {}) => jg.get(target, { headers: { ...keyHeader(up, name), ...headers } });

  test('completed job is stored then hit', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });

    const first = await getJob(JOB_PATH(id));
    assert.equal(first.status, 200);
    assert.equal(first.body, up.jobBody(id));
    assert.equal(first.headers['cache-status'], STORED);
    assert.match(first.headers['content-type'], /^application\/json/);
    assert.equal(up.jobCount(id), 1);

    const second = await getJob(JOB_PATH(id));
    assert.equal(second.status, 200);
    assert.equal(second.body, up.jobBody(id));
    assert.equal(second.headers['cache-status'], HIT);
    assert.match(second.headers['content-type'], /^application\/json/);
    assert.match(second.headers.age ?? '', /^\d+$/);
    assert.ok(Number(second.headers.age) <= 5, `Age ${second.headers.age} on a fresh entry`);
    assert.match(second.headers.etag ?? '', /^"[0-9a-f]{16}"$/);
    assert.equal(up.jobCount(id), 1);

    const third = await getJob(JOB_PATH(id));
    assert.equal(third.headers.etag, second.headers.etag, 'ETag stable across hits');
  });

  test('If-None-Match with the ETag gets 304', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    await getJob(JOB_PATH(id));
    const hit = await getJob(JOB_PATH(id));
    const etag = hit.headers.etag;
    assert.ok(etag, 'hit carries an ETag');

    const notModified = await getJob(JOB_PATH(id), 'A1', { 'If-None-Match': etag });
    assert.equal(notModified.status, 304);
    assert.equal(notModified.body, '');
    assert.equal(notModified.headers.etag, etag);

    const listed = await getJob(JOB_PATH(id), 'A1', { 'If-None-Match': `"0000000000000000", ${etag}` });
    assert.equal(listed.status, 304, 'an ETag inside a list matches');

    const other = await getJob(JOB_PATH(id), 'A1', { 'If-None-Match': '"0000000000000000"' });
    assert.equal(other.status, 200);
    assert.equal(other.body, up.jobBody(id));
    assert.equal(up.jobCount(id), 1);
  });

  test('public alias shares the cache entry', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });

    const miss = await getJob(PUBLIC_JOB_PATH(id));
    assert.equal(miss.status, 200);
    assert.equal(miss.headers['cache-status'], STORED);
    assert.equal(up.count({ path: PUBLIC_JOB_PATH(id) }), 1, 'upstream saw the /public path');

    const viaMain = await getJob(JOB_PATH(id));
    assert.equal(viaMain.headers['cache-status'], HIT);
    const viaPublic = await getJob(PUBLIC_JOB_PATH(id));
    assert.equal(viaPublic.headers['cache-status'], HIT);
    assert.equal(viaPublic.body, up.jobBody(id));
    assert.equal(up.jobCount(id), 1);
  });

  test('query string is forwarded and ignored for the key', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });

    const miss = await getJob(`${JOB_PATH(id)}?job_id=${id}`);
    assert.equal(miss.status, 200);
    assert.equal(miss.headers['cache-status'], STORED);
    const seen = up.requests.filter((r) => r.jobId === id);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].query, `?job_id=${id}`);
    assert.equal(seen[0].path, JOB_PATH(id));

    for (const query of ['', '?x=1', `?job_id=${id}&other=2`]) {
      const hit = await getJob(`${JOB_PATH(id)}${query}`);
      assert.equal(hit.headers['cache-status'], HIT, `query ${JSON.stringify(query)}`);
    }
    assert.equal(up.jobCount(id), 1);
  });

  test('forwarded request headers', async () => {
    const id = up.createJob({ org: 'A', status: 'in_progress' });
    const res = await jg.get(`${JOB_PATH(id)}?job_id=${id}`, {
      headers: {
        ...keyHeader(up, 'A1'),
        Accept: 'application/json',
        'User-Agent': 'jobgate-it/1.0',
        'X-Galileo-SDK': 'galileo-js/1.33.1',
        'X-Request-Id': 'req-123',
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
        Connection: 'keep-alive, X-Hop-Test',
        'X-Hop-Test': 'must-not-travel',
        'Keep-Alive': 'timeout=30',
        TE: 'trailers',
        'Proxy-Authorization': 'Basic c2VjcmV0',
      },
    });
    assert.equal(res.status, 200);

    const seen = up.requests.filter((r) => r.jobId === id);
    assert.equal(seen.length, 1);
    const h = seen[0].headers;
    assert.equal(h['galileo-api-key'], up.keys.A1);
    assert.equal(h.accept, 'application/json');
    assert.equal(h['user-agent'], 'jobgate-it/1.0');
    assert.equal(h['x-galileo-sdk'], 'galileo-js/1.33.1');
    assert.equal(h['x-request-id'], 'req-123');
    assert.equal(h.traceparent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');

    assert.equal(h['x-hop-test'], undefined, 'header named in Connection is hop-by-hop');
    assert.equal(h['keep-alive'], undefined);
    assert.equal(h.te, undefined);
    assert.equal(h['proxy-authorization'], undefined);
    assert.equal(h.host, `127.0.0.1:${up.port}`, 'Host names the upstream, not jobgate');
  });

  test('POST with body passes through', async () => {
    const before_ = up.routeCount('delete-by-metadata');
    const payload = JSON.stringify({ metadata_key: 'customer_id', metadata_value: 'cust-42' });
    const res = await jg.request('/v2/org-jobs/delete-by-metadata', {
      method: 'POST',
      headers: { ...keyHeader(up, 'A1'), 'Content-Type': 'application/json' },
      body: payload,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers['cache-status'], BYPASS);
    assert.equal(res.json.message, 'Deletion job created');
    assert.ok(up.job(res.json.job_id), 'the upstream created the job');
    assert.equal(up.job(res.json.job_id).request_data.metadata_value, 'cust-42');
    assert.equal(up.routeCount('delete-by-metadata'), before_ + 1);
    const seen = up.requests.filter((r) => r.route === 'delete-by-metadata').at(-1);
    assert.equal(seen.method, 'POST');
    assert.equal(seen.body.toString(), payload);
    assert.equal(seen.headers['content-type'], 'application/json');
    assert.equal(seen.headers['galileo-api-key'], up.keys.A1);
  });

  test('other methods and paths relay headers and body', async () => {
    const body = Buffer.from('binary\x00body\xff', 'latin1');
    const res = await jg.request('/echo/some/path?a=1&b=%20x', {
      method: 'PUT',
      headers: { 'X-Custom': 'value-1', 'Content-Type': 'application/octet-stream' },
      body,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers['cache-status'], BYPASS);
    assert.equal(res.headers['x-echo-route'], 'yes', 'response header relayed');
    assert.deepEqual(res.headers['set-cookie'], ['echo=1; Path=/']);
    assert.equal(res.json.method, 'PUT');
    assert.equal(res.json.path, '/echo/some/path');
    assert.equal(res.json.query, '?a=1&b=%20x');
    assert.equal(res.json.headers['x-custom'], 'value-1');
    assert.deepEqual(Buffer.from(res.json.body, 'base64'), body);

    for (const method of ['DELETE', 'PATCH', 'OPTIONS']) {
      const r = await jg.request('/echo/m', { method });
      assert.equal(r.status, 200, method);
      assert.equal(r.json.method, method);
    }

    const missing = await jg.get('/no/such/path');
    assert.equal(missing.status, 404);
    assert.deepEqual(missing.json, { detail: 'Not Found' });
    assert.equal(missing.headers['cache-status'], BYPASS);
  });

  test('pass-through keeps the path as sent', async () => {
    for (const target of ['/echo/a/../b', '/echo/./c', '/echo/%2E%2E/d', '/echo/x%2Fy', '/echo//double']) {
      const res = await jg.get(target);
      assert.equal(res.status, 200, target);
      assert.equal(res.json.path, target.split('?')[0], `upstream saw ${res.json.path} for ${target}`);
    }
  });

  test('healthcheck is never cached', async () => {
    const before_ = up.routeCount('healthcheck');
    const a = await jg.get('/healthcheck');
    const b = await jg.get('/healthcheck');
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    assert.equal(a.json.message, 'ok');
    assert.equal(a.headers['cache-status'], BYPASS);
    assert.equal(b.headers['cache-status'], BYPASS);
    assert.equal(up.routeCount('healthcheck'), before_ + 2);
  });

  test('HEAD on the job route passes through', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const res = await jg.request(JOB_PATH(id), { method: 'HEAD', headers: keyHeader(up, 'A1') });
    assert.equal(res.status, 405);
    assert.equal(res.headers.allow, 'GET');
    assert.equal(res.headers['cache-status'], BYPASS);
    assert.equal(up.count({ job: id, method: 'HEAD' }), 1);

    // The HEAD did not create an entry: the next GET is a miss.
    const get = await getJob(JOB_PATH(id));
    assert.equal(get.headers['cache-status'], STORED);
  });

  test('trailing slash passes through', async () => {
    const id = up.createJob({ org: 'A', status: 'completed' });
    const res = await getJob(`${JOB_PATH(id)}/`);
    assert.equal(res.status, 307);
    assert.match(res.headers.location, new RegExp(`/v2/org-jobs/${id}$`));
    assert.equal(res.headers['cache-status'], BYPASS);
    assert.equal(up.count({ path: `${JOB_PATH(id)}/` }), 1);

    const again = await getJob(`${JOB_PATH(id)}/`);
    assert.equal(again.status, 307);
    assert.equal(up.count({ path: `${JOB_PATH(id)}/` }), 2, 'a redirect is never cached');
  });

  test('curl sees a hit', async () => {
    const id = up.createJob({ org: 'A', status: 'failed', errorMessage: 'metadata key not indexed' });
    const first = await curl(`${jg.url}${JOB_PATH(id)}`, { headers: keyHeader(up, 'A2') });
    assert.equal(first.status, 200);
    assert.equal(first.headers['cache-status'], STORED);
    const second = await curl(`${jg.url}${JOB_PATH(id)}`, { headers: keyHeader(up, 'A2') });
    assert.equal(second.status, 200);
    assert.equal(second.headers['cache-status'], HIT);
    assert.equal(second.body, up.jobBody(id));
    assert.equal(up.jobCount(id), 1);
  });
});
