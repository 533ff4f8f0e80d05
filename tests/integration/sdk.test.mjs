// The real npm galileo SDK (1.33.1) through jobgate. GalileoApiClient, with
// GALILEO_API_URL pointing at jobgate, calls /healthcheck and logs in with
// POST /login/api_key (both passed through). Then it polls
// v2/org-jobs/{job_id} with a Bearer token and ?job_id=. The second poll of
// a completed job is a cache hit, so the upstream gets the job request once.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startJobgate } from './harness.mjs';
import { KEYS, startUpstream } from './upstream.mjs';

describe('galileo SDK', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url });

    // The SDK reads its configuration from the environment when init() runs.
    // GALILEO_CONSOLE_URL must stay unset: the SDK rewrites a loopback
    // console URL to http://localhost:8088.
    for (const name of ['GALILEO_CONSOLE_URL', 'GALILEO_USERNAME', 'GALILEO_PASSWORD', 'GALILEO_SSO_ID_TOKEN',
      'GALILEO_SSO_PROVIDER', 'HTTP_PROXY', 'http_proxy', 'HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy']) {
      delete process.env[name];
    }
    process.env.GALILEO_API_URL = jg.url;
    process.env.GALILEO_API_KEY = KEYS.A1;
    process.env.GALILEO_LOG_LEVEL = 'error';
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  test('SDK polls a completed job through jobgate', async () => {
    const { GalileoApiClient } = await import('galileo');
    const id = up.createJob({ org: 'A', status: 'completed' });

    const client = new GalileoApiClient();
    await client.init({ projectScoped: false });

    assert.equal(up.routeCount('healthcheck'), 1, 'health check went through jobgate');
    assert.equal(up.count({ route: 'login', method: 'POST' }), 1, 'login went through jobgate');
    const login = up.requests.find((r) => r.route === 'login');
    assert.deepEqual(JSON.parse(login.body.toString()), { api_key: KEYS.A1 });

    const first = await client.makeRequest('GET', 'v2/org-jobs/{job_id}', undefined, { job_id: id });
    assert.deepEqual(first, up.job(id));
    assert.equal(up.jobCount(id), 1);

    const seen = up.requests.filter((r) => r.jobId === id);
    assert.equal(seen[0].query, `?job_id=${id}`);
    assert.match(seen[0].headers.authorization, /^Bearer eyJ/);
    assert.match(seen[0].headers['x-galileo-sdk'], /^galileo-js\//);

    const second = await client.makeRequest('GET', 'v2/org-jobs/{job_id}', undefined, { job_id: id });
    assert.deepEqual(second, up.job(id));
    assert.equal(up.jobCount(id), 1, 'second poll served by jobgate');

    // The hit shows in jobgate's access log.
    await jg.waitForLines((l) => / access / .test(l) && l.includes(`path=/v2/org-jobs/${id}`), 2);
    const lines = jg.accessLines().filter((l) => l.path === `/v2/org-jobs/${id}`);
    assert.deepEqual(lines.map((l) => l.cache), ['stored', 'hit']);

    // A running job keeps going upstream until it completes.
    const running = up.createJob({ org: 'A', status: 'in_progress' });
    const r1 = await client.makeRequest('GET', 'v2/org-jobs/{job_id}', undefined, { job_id: running });
    assert.equal(r1.status, 'in_progress');
    up.advance(running);
    up.advance(running);
    const r2 = await client.makeRequest('GET', 'v2/org-jobs/{job_id}', undefined, { job_id: running });
    assert.equal(r2.status, 'completed');
    const r3 = await client.makeRequest('GET', 'v2/org-jobs/{job_id}', undefined, { job_id: running });
    assert.equal(r3.status, 'completed');
    assert.equal(up.jobCount(running), 2);
  });

  test('SDK sees a job of another org as an error', async () => {
    const { GalileoApiClient } = await import('galileo');
    const other = up.createJob({ org: 'B', status: 'completed' });
    const client = new GalileoApiClient();
    await client.init({ projectScoped: false });
    await assert.rejects(
      client.makeRequest('GET', 'v2/org-jobs/{job_id}', undefined, { job_id: other }),
      /404/,
    );
  });
});
