// Coalescing. Concurrent misses for one job by callers proven for the same
// organization share one upstream request, and every waiter gets the same
// response, a 500 included. Callers of different organizations, and
// unproven credentials, are never merged. A client that hangs up while it
// waits, even the one whose request started the fetch, does not disturb the
// others. A 401 reaches only waiters that hold the credential that got it.
//
// The upstream holds the shared request with a gate until jobgate's
// jobgate_coalesced_total metric shows that every client joined, so no test
// sleeps.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, rawExchange, startJobgate } from './harness.mjs';
import { createGate, startUpstream } from './upstream.mjs';

const CLIENTS = 50;

describe('coalescing', () => {
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

  const getJob = (id, name, opts = {}) => jg.get(JOB_PATH(id), { ...opts, headers: keyHeader(up, name) });

  async function prove(name, org) {
    const y = up.createJob({ org, status: 'in_progress' });
    const res = await getJob(y, name);
    assert.equal(res.status, 200, `proof of ${name}`);
  }

  async function waitCoalesced(base, joined) {
    await jg.waitForMetric('jobgate_coalesced_total', (v) => v >= base + joined, 10000);
  }

  test('50 proven callers share one fetch', async () => {
    for (const name of ['A1', 'A2', 'A3']) {
      await prove(name, 'A');
    }
    const id = up.createJob({ org: 'A', status: 'completed' });
    const gate = up.hold({ job: id });
    const base = await jg.metric('jobgate_coalesced_total');

    const names = ['A1', 'A2', 'A3'];
    const pending = Array.from({ length: CLIENTS }, (_, i) => getJob(id, names[i % 3]));
    try {
      await gate.waitArrivals(1);
      await waitCoalesced(base, CLIENTS - 1);
    } finally {
      gate.release();
    }
    const results = await Promise.all(pending);

    assert.equal(up.jobCount(id), 1);
    for (const res of results) {
      assert.equal(res.status, 200);
      assert.equal(res.body, up.jobBody(id));
    }
    const statuses = results.map((r) => r.headers['cache-status']);
    assert.equal(statuses.filter((s) => s === 'jobgate; fwd=miss; fwd-status=200; stored').length, 1);
    assert.equal(statuses.filter((s) => s === 'jobgate; fwd=miss; fwd-status=200; stored; collapsed').length, CLIENTS - 1);
    assert.equal(await jg.metric('jobgate_coalesced_total'), base + CLIENTS - 1);

    const hit = await getJob(id, 'A1');
    assert.equal(hit.headers['cache-status'], 'jobgate; hit');
    assert.equal(up.jobCount(id), 1);
  });

  test('failing shared fetch fails every waiter', async () => {
    await prove('A1', 'A');
    await prove('A2', 'A');
    const id = up.createJob({ org: 'A', status: 'completed' });
    const gate = createGate();
    up.addFault({ job: id, kind: 'status', status: 500, detail: 'scripted failure', gate });
    const base = await jg.metric('jobgate_coalesced_total');

    const pending = Array.from({ length: CLIENTS }, (_, i) => getJob(id, i % 2 ? 'A1' : 'A2'));
    try {
      await gate.waitArrivals(1);
      await waitCoalesced(base, CLIENTS - 1);
    } finally {
      gate.release();
    }
    const results = await Promise.all(pending);

    assert.equal(up.jobCount(id), 1);
    for (const res of results) {
      assert.equal(res.status, 500);
      assert.deepEqual(res.json, { detail: 'scripted failure' });
    }
    const collapsed = results.filter((r) => /; collapsed$/.test(r.headers['cache-status'] ?? ''));
    assert.equal(collapsed.length, CLIENTS - 1);

    // Nothing was stored: the next request goes upstream and stores.
    const next = await getJob(id, 'A1');
    assert.equal(next.status, 200);
    assert.equal(next.headers['cache-status'], 'jobgate; fwd=miss; fwd-status=200; stored');
    assert.equal(up.jobCount(id), 2);
  });

  test('not-cacheable answer reaches every waiter', async () => {
    await prove('A1', 'A');
    const id = up.createJob({ org: 'A', status: 'in_progress' });
    const gate = up.hold({ job: id });
    const base = await jg.metric('jobgate_coalesced_total');

    const pending = Array.from({ length: 20 }, () => getJob(id, 'A1'));
    try {
      await gate.waitArrivals(1);
      await waitCoalesced(base, 19);
    } finally {
      gate.release();
    }
    const results = await Promise.all(pending);
    assert.equal(up.jobCount(id), 1);
    for (const res of results) {
      assert.equal(res.status, 200);
      assert.equal(res.body, up.jobBody(id));
    }
  });

  test('two orgs are never merged', async () => {
    await prove('A1', 'A');
    await prove('B1', 'B');
    const id = up.createJob({ org: 'A', status: 'completed' });
    const gate = up.hold({ job: id }, Infinity);
    const base = await jg.metric('jobgate_coalesced_total');

    const half = CLIENTS / 2;
    const aPending = Array.from({ length: half }, () => getJob(id, 'A1'));
    const bPending = Array.from({ length: half }, () => getJob(id, 'B1'));
    try {
      await gate.waitArrivals(2);
      await waitCoalesced(base, CLIENTS - 2);
    } finally {
      gate.release();
    }
    const aResults = await Promise.all(aPending);
    const bResults = await Promise.all(bPending);

    assert.equal(up.jobCount(id), 2, 'one fetch per organization');
    const byKey = up.requests.filter((r) => r.jobId === id).map((r) => r.headers['galileo-api-key']).sort();
    assert.deepEqual(byKey, [up.keys.A1, up.keys.B1].sort());
    for (const res of aResults) {
      assert.equal(res.status, 200);
      assert.equal(res.body, up.jobBody(id));
    }
    for (const res of bResults) {
      assert.equal(res.status, 404);
      assert.deepEqual(res.json, { detail: 'Job not found' });
    }
  });

  test('unproven credentials coalesce per credential', async () => {
    // A fresh jobgate, so that no key is proven yet.
    const fresh = await startJobgate({ upstreamUrl: up.url });
    try {
      const id = up.createJob({ org: 'A', status: 'completed' });
      const gate = up.hold({ job: id }, Infinity);
      const base = await fresh.metric('jobgate_coalesced_total');

      const names = ['A1', 'A2', 'A3'];
      const pending = Array.from({ length: 30 }, (_, i) => fresh.get(JOB_PATH(id), { headers: keyHeader(up, names[i % 3]) }));
      try {
        await gate.waitArrivals(3);
        await fresh.waitForMetric('jobgate_coalesced_total', (v) => v >= base + 27, 10000);
      } finally {
        gate.release();
      }
      const results = await Promise.all(pending);

      assert.equal(up.jobCount(id), 3, 'one fetch per unproven credential');
      const byKey = up.requests.filter((r) => r.jobId === id).map((r) => r.headers['galileo-api-key']).sort();
      assert.deepEqual(byKey, names.map((n) => up.keys[n]).sort());
      for (const res of results) {
        assert.equal(res.status, 200);
        assert.equal(res.body, up.jobBody(id));
      }
    } finally {
      await fresh.stopChecked();
    }
  });

  test('leader hanging up does not hurt waiters', async () => {
    await prove('A1', 'A');
    await prove('A2', 'A');
    const id = up.createJob({ org: 'A', status: 'completed' });
    const gate = up.hold({ job: id });
    const base = await jg.metric('jobgate_coalesced_total');

    // The first client starts the fetch, then hangs up while it is held.
    let leaderReq;
    const leader = getJob(id, 'A1', { onRequest: (req) => { leaderReq = req; } }).then(
      () => 'answered',
      (err) => err.code ?? err.message,
    );
    await gate.waitArrivals(1);
    const waiters = Array.from({ length: 10 }, (_, i) => getJob(id, i % 2 ? 'A1' : 'A2'));
    await waitCoalesced(base, 10);

    // A waiter hangs up too.
    let quitterReq;
    const quitter = getJob(id, 'A2', { onRequest: (req) => { quitterReq = req; } }).then(
      () => 'answered',
      (err) => err.code ?? err.message,
    );
    await waitCoalesced(base, 11);
    leaderReq.destroy();
    quitterReq.destroy();
    assert.notEqual(await leader, 'answered');
    assert.notEqual(await quitter, 'answered');

    gate.release();
    const results = await Promise.all(waiters);
    for (const res of results) {
      assert.equal(res.status, 200);
      assert.equal(res.body, up.jobBody(id));
    }
    assert.equal(up.jobCount(id), 1);
    assert.equal(jg.exited, false, 'jobgate is still running');

    const hit = await getJob(id, 'A2');
    assert.equal(hit.headers['cache-status'], 'jobgate; hit');
    const health = await jg.admin('/healthz');
    assert.equal(health.status, 200);
  });

  test('401 reaches only its own credential', async () => {
    await prove('A1', 'A');
    await prove('A2', 'A');
    const id = up.createJob({ org: 'A', status: 'completed' });
    const gate = up.hold({ job: id });
    const base = await jg.metric('jobgate_coalesced_total');

    // A1 is revoked at the upstream but still proven in jobgate, so its
    // request leads a fetch that A2's requests join.
    up.revokeKey('A1');
    try {
      const a1 = getJob(id, 'A1');
      await gate.waitArrivals(1);
      const a2 = Array.from({ length: 10 }, () => getJob(id, 'A2'));
      await waitCoalesced(base, 10);
      gate.release();

      const a1Result = await a1;
      assert.equal(a1Result.status, 401);
      const a2Results = await Promise.all(a2);
      for (const res of a2Results) {
        assert.equal(res.status, 200, 'a 401 for A1 is not given to A2');
        assert.equal(res.body, up.jobBody(id));
      }
      const count = up.jobCount(id);
      assert.ok(count >= 2, `upstream saw ${count} requests for the job`);
      assert.ok(count <= 11, `upstream saw ${count} requests for the job`);
      const a2Requests = up.requests.filter((r) => r.jobId === id && r.headers['galileo-api-key'] === up.keys.A2);
      assert.ok(a2Requests.length >= 1, 'A2 sent its own request');
    } finally {
      up.restoreKey('A1');
      gate.release();
    }
  });

  test('pipelined repeats of a miss share its fetch', async () => {
    await prove('A1', 'A');
    const id = up.createJob({ org: 'A', status: 'completed' });
    const request = (last) => `GET ${JOB_PATH(id)} HTTP/1.1\r\nHost: jobgate\r\n`
      + `Galileo-API-Key: ${up.keys.A1}\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;

    // The second and third requests are read with the first and parsed
    // as soon as it is answered, before its cache write is committed.
    const res = await rawExchange(jg.port, request(false) + request(false) + request(true));
    assert.equal(res.closed, true);
    const answers = res.data.split(/(?=HTTP\/1\.1 )/);
    assert.equal(answers.length, 3, res.data);
    for (const answer of answers) {
      assert.match(answer, /^HTTP\/1\.1 200 /);
      assert.ok(answer.endsWith(up.jobBody(id)), answer);
    }
    assert.equal(up.jobCount(id), 1);
  });
});
