// Many organizations, many credentials, one cache. A randomised run of
// 2000 requests from concurrent pollers, while jobs move through their
// statuses and the upstream revokes keys and tokens. Every response is
// checked against the upstream's records:
//
// - a 200 carries the requested job, of the caller's own organization, in a
//   status the job had while the request was in flight (a hit: a terminal
//   one);
// - a job of another organization, of an organization no key belongs to,
//   or an unknown job gets 404, and never a 200;
// - a 401 comes only for a revoked credential, and once the client has
//   seen a 401 for a credential, that credential never gets a hit again.
//
// The credentials are the upstream's fixed keys of organizations A, B and
// C, sent as Galileo-API-Key or Splunk-AO-API-Key, and a bearer token per
// key. Jobs of organizations that no key belongs to stand for other
// tenants. The seed is printed and taken from JG_TEST_SEED when set: it
// fixes the request plan and the mutations, while the interleaving of the
// pollers depends on timing.
//
// A second, deterministic case covers one race: an upstream 200 that was
// made before a key was revoked but reaches jobgate after the 401 that
// made jobgate forget the key.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, startJobgate } from './harness.mjs';
import { KEYS, ORGS, createGate, startUpstream } from './upstream.mjs';

// JG_MULTIORG_REQUESTS makes a longer soak run of the same test.
const REQUESTS = Number(process.env.JG_MULTIORG_REQUESTS ?? 2000);
// Growth of jobgate's own memory (RssAnon) from a tenth of the requests to
// the end that counts as a leak: a few bytes per request over a soak run.
const MAX_RSS_ANON_GROWTH_KIB = 4096;
const POLLERS = 12;
const JOBS_PER_ORG = { A: 14, B: 10, C: 6 };
const OTHER_TENANT_JOBS = 6;
const MAX_KEY_REVOCATIONS = 2;
const MAX_TOKEN_REVOCATIONS = 2;
// Revocations happen in the second half, so that most credentials build up
// hits first.
const REVOKE_FROM = REQUESTS / 2;
const TERMINAL = new Set(['completed', 'failed', 'error', 'cancelled']);
const HIT = 'jobgate; hit';

const SEED = Number(process.env.JG_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31));
console.log(`# multiorg seed: ${SEED} (set JG_TEST_SEED=${SEED} to repeat the plan)`);

// mulberry32: a small seeded generator, good enough to pick test cases.
function makeRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Whether jobgate's memory is its own: valgrind and AddressSanitizer keep
// shadow memory and freed blocks of their own, which grow with the run.
function plainMemory(pid) {
  return !process.env.JG_WRAPPER && !/libasan|libubsan/.test(fs.readFileSync(`/proc/${pid}/maps`, 'utf8'));
}

// jobgate's memory not backed by a file, in KiB, from /proc.
function rssAnonKib(pid) {
  const m = /^RssAnon:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

function pick(random, list) {
  return list[Math.floor(random() * list.length)];
}

// The statuses a job may show next: terminal ones never change.
function nextStatus(random, status) {
  switch (status) {
    case 'unstarted': return 'in_progress';
    case 'in_progress': return random() < 0.9 ? 'processed' : 'cancelled';
    case 'processed': return random() < 0.7 ? 'completed' : 'failed';
    default: return null;
  }
}

describe('many organizations, randomised', () => {
  let up;
  let jg;
  const random = makeRandom(SEED);
  const shareScope = random() < 0.5 ? 'org' : 'credential';

  before(async () => {
    up = await startUpstream();
    console.log(`# multiorg share_scope: ${shareScope}`);
    jg = await startJobgate({ upstreamUrl: up.url, flags: { auth_ttl: 2, share_scope: shareScope } });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  test(`${REQUESTS} requests never cross organizations`, async () => {
    let clock = 0;

    // Credentials: each key in one of its two headers, and a bearer token.
    const credentials = [];
    for (const name of Object.keys(KEYS)) {
      const header = random() < 0.5 ? 'Galileo-API-Key' : 'Splunk-AO-API-Key';
      credentials.push({ label: `${name}/${header}`, keyName: name, org: ORGS[name[0]], headers: { [header]: KEYS[name] } });
      const token = up.login(name);
      credentials.push({ label: `${name}/bearer`, keyName: name, token, org: ORGS[name[0]], headers: { Authorization: `Bearer ${token}` } });
    }
    for (const c of credentials) {
      c.revokedAt = null;     // clock when the upstream began to reject it
      c.seen401 = [];         // clock values when a 401 was complete
      c.forwarded200 = [];    // clock values when a forwarded 200 was complete
    }

    // Jobs: a history of {status, at} per job, oldest first.
    const jobs = [];
    const initial = () => pick(random, ['unstarted', 'in_progress', 'processed', 'completed', 'failed', 'error', 'cancelled']);
    for (const [org, count] of Object.entries(JOBS_PER_ORG)) {
      for (let i = 0; i < count; i++) {
        const status = initial();
        const id = up.createJob({ org, status });
        jobs.push({ id, org: ORGS[org], history: [{ status, at: clock }] });
      }
    }
    for (let i = 0; i < OTHER_TENANT_JOBS; i++) {
      const status = initial();
      const id = up.createJob({ org: 'A', status });
      const tenant = crypto.randomUUID();
      up.updateJob(id, { organization_id: tenant });
      jobs.push({ id, org: tenant, history: [{ status, at: clock }] });
    }
    const jobById = new Map(jobs.map((j) => [j.id, j]));

    // The plan: per request a credential and a job, and the mutations to
    // apply before it is sent.
    let keyRevocations = 0;
    let tokenRevocations = 0;
    const plan = [];
    for (let i = 0; i < REQUESTS; i++) {
      const cred = pick(random, credentials);
      const roll = random();
      let jobId;
      if (roll < 0.65) {
        jobId = pick(random, jobs.filter((j) => j.org === cred.org)).id;
      } else if (roll < 0.9) {
        jobId = pick(random, jobs.filter((j) => j.org !== cred.org)).id;
      } else {
        jobId = crypto.randomUUID();
      }
      const mutations = [];
      if (random() < 0.06) {
        mutations.push({ kind: 'advance', job: pick(random, jobs).id });
      }
      if (i > REVOKE_FROM && keyRevocations < MAX_KEY_REVOCATIONS && random() < 0.004) {
        keyRevocations += 1;
        mutations.push({ kind: 'revoke-key', name: pick(random, ['A2', 'A3', 'A4', 'B2']) });
      }
      if (i > REVOKE_FROM && tokenRevocations < MAX_TOKEN_REVOCATIONS && random() < 0.004) {
        tokenRevocations += 1;
        mutations.push({ kind: 'revoke-token', cred: pick(random, credentials.filter((c) => c.token)) });
      }
      plan.push({ cred, jobId, mutations });
    }

    function applyMutation(m) {
      clock += 1;
      if (m.kind === 'advance') {
        const job = jobById.get(m.job);
        const next = nextStatus(random, job.history.at(-1).status);
        if (next !== null) {
          up.setStatus(job.id, next);
          job.history.push({ status: next, at: clock });
        }
      } else if (m.kind === 'revoke-key') {
        up.revokeKey(m.name);
        for (const c of credentials) {
          if (c.keyName === m.name && c.revokedAt === null) {
            c.revokedAt = clock;
          }
        }
      } else {
        up.revokeToken(m.cred.token);
        m.cred.revokedAt ??= clock;
      }
    }

    // The statuses a job showed at some time in [from, to].
    function statusesBetween(job, from, to) {
      const shown = new Set();
      for (let i = 0; i < job.history.length; i++) {
        const start = job.history[i].at;
        const end = i + 1 < job.history.length ? job.history[i + 1].at : Infinity;
        if (start <= to && end >= from) {
          shown.add(job.history[i].status);
        }
      }
      return shown;
    }

    const results = [];
    const violations = [];
    let next = 0;
    let rssEarly = null;
    const poller = async () => {
      while (next < plan.length) {
        if (rssEarly === null && next >= plan.length / 10) {
          rssEarly = rssAnonKib(jg.pid);
        }
        const step = plan[next++];
        for (const m of step.mutations) {
          applyMutation(m);
        }
        const sentAt = ++clock;
        const res = await jg.get(JOB_PATH(step.jobId), { headers: step.cred.headers, timeoutMs: 10000 });
        const doneAt = ++clock;
        const r = { ...step, sentAt, doneAt, res, hit: res.headers['cache-status'] === HIT };
        results.push(r);
        if (res.status === 401) {
          step.cred.seen401.push(doneAt);
        } else if (res.status === 200 && !r.hit) {
          step.cred.forwarded200.push(doneAt);
        }
      }
    };
    await Promise.all(Array.from({ length: POLLERS }, poller));
    const rssLate = rssAnonKib(jg.pid);
    console.log(`# multiorg RssAnon: ${rssEarly} KiB after a tenth of the requests, ${rssLate} KiB at the end`);
    if (plainMemory(jg.pid)) {
      assert.ok(rssLate - rssEarly <= MAX_RSS_ANON_GROWTH_KIB,
        `jobgate's own memory grew by ${rssLate - rssEarly} KiB from a tenth of the requests to the end`);
    }

    // A hit after a 401 the client saw, with no forwarded 200 after that
    // 401 which could have proven the credential again.
    function hitAfter401(r) {
      const seen = r.cred.seen401.filter((t) => t < r.sentAt);
      if (seen.length === 0) {
        return false;
      }
      const last401 = Math.max(...seen);
      return !r.cred.forwarded200.some((t) => t > last401);
    }

    for (const r of results) {
      const what = `${r.cred.label} GET ${r.jobId} (sent at ${r.sentAt})`;
      const job = jobById.get(r.jobId);
      const revoked = r.cred.revokedAt !== null && r.cred.revokedAt < r.doneAt;
      const { status, json } = r.res;

      if (status === 200) {
        if (json?.organization_id !== r.cred.org) {
          violations.push(`${what}: 200 with a job of org ${json?.organization_id}, caller is of org ${r.cred.org}`);
          continue;
        }
        if (json?.id !== r.jobId || job === undefined || job.org !== r.cred.org) {
          violations.push(`${what}: 200 with job ${json?.id}`);
          continue;
        }
        const shown = statusesBetween(job, r.sentAt, r.doneAt);
        if (!shown.has(json.status)) {
          violations.push(`${what}: status ${json.status}, the job showed ${[...shown].join('/')} meanwhile`);
        }
        if (r.hit && !TERMINAL.has(json.status)) {
          violations.push(`${what}: hit with status ${json.status}`);
        }
        if (r.hit && hitAfter401(r)) {
          violations.push(`${what}: hit after the client saw a 401 for this credential`);
        }
      } else if (status === 401) {
        if (!revoked) {
          violations.push(`${what}: 401 for a credential that is not revoked`);
        }
      } else if (status === 404) {
        if (job !== undefined && job.org === r.cred.org) {
          violations.push(`${what}: 404 for a job of the caller's org`);
        }
      } else {
        violations.push(`${what}: unexpected status ${status} ${r.res.body.slice(0, 100)}`);
      }
      if (hitAfter401(r) && status !== 401) {
        violations.push(`${what}: ${status} after a 401 for this credential`);
      }
    }

    const hits = results.filter((r) => r.hit).length;
    const collapsed = results.filter((r) => (r.res.headers['cache-status'] ?? '').endsWith('; collapsed')).length;
    const byStatus = {};
    for (const r of results) {
      byStatus[r.res.status] = (byStatus[r.res.status] ?? 0) + 1;
    }
    const upstreamJobRequests = up.routeCount('job');
    console.log(`# multiorg: ${results.length} requests, ${hits} hits, ${results.length - hits} misses (${collapsed} collapsed), `
      + `${upstreamJobRequests} upstream requests, statuses ${JSON.stringify(byStatus)}, `
      + `${keyRevocations} keys and ${tokenRevocations} tokens revoked`);

    assert.deepEqual(violations, []);
    assert.equal(results.length, REQUESTS);
    // Every request the upstream saw came from a miss, and every hit was
    // served without one.
    assert.equal(await jg.metric('jobgate_upstream_requests_total'), upstreamJobRequests);
    assert.equal(await jg.metric('jobgate_cache_hits_total'), hits);
    assert.ok(upstreamJobRequests <= results.length - hits, `${upstreamJobRequests} upstream requests for ${results.length - hits} misses`);
  });
});

describe('revocation race', () => {
  let up;
  let jg;

  before(async () => {
    up = await startUpstream();
    jg = await startJobgate({ upstreamUrl: up.url, flags: { auth_ttl: 3600 } });
  });

  after(async () => {
    await jg?.stopChecked();
    await up?.close();
  });

  // The upstream made a 200 for A2 before revoking A2, but jobgate gets it
  // only after a 401 for A2. That 200 must not prove A2 again.
  test('200 made before a revocation does not prove the key again', async () => {
    const cached = up.createJob({ org: 'A', status: 'completed' });
    const stored = await jg.get(JOB_PATH(cached), { headers: keyHeader(up, 'A1') });
    assert.equal(stored.status, 200);
    const proof = await jg.get(JOB_PATH(up.createJob({ org: 'A', status: 'in_progress' })), { headers: keyHeader(up, 'A2') });
    assert.equal(proof.status, 200);
    assert.equal((await jg.get(JOB_PATH(cached), { headers: keyHeader(up, 'A2') })).headers['cache-status'], HIT);

    const slow = up.createJob({ org: 'A', status: 'completed' });
    const gate = createGate();
    up.addFault({ job: slow, gate, planFirst: true });
    const slowResponse = jg.get(JOB_PATH(slow), { headers: keyHeader(up, 'A2') });
    try {
      await gate.waitArrivals(1);
      up.revokeKey('A2');
      const refused = await jg.get(JOB_PATH(up.createJob({ org: 'A', status: 'in_progress' })), { headers: keyHeader(up, 'A2') });
      assert.equal(refused.status, 401);
      const afterForget = await jg.get(JOB_PATH(cached), { headers: keyHeader(up, 'A2') });
      assert.equal(afterForget.status, 401, 'a hit right after the 401');
    } finally {
      gate.release();
    }
    const late = await slowResponse;
    assert.equal(late.status, 200);

    const countBefore = up.jobCount(cached);
    const res = await jg.get(JOB_PATH(cached), { headers: keyHeader(up, 'A2') });
    assert.notEqual(res.headers['cache-status'], HIT, 'a revoked key got a cached job after its 401 reached jobgate');
    assert.equal(res.status, 401);
    assert.equal(up.jobCount(cached), countBefore + 1);
  });
});
