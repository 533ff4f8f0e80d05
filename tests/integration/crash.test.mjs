// Crash safety of the cache. 20 cycles of: start jobgate on the same
// cache_dir, drive many distinct completed jobs through it at once (cache
// writes), SIGKILL it in the middle, start it again. Each restart must open
// the cache, clear the reader slot of the killed process, and serve every
// entry that was provably committed before the kill as a hit once the
// credential is proven again, with jobgate_cache_corrupt_total at 0.
//
// A response with "stored" in its Cache-Status is queued and committed at
// the end of that event-loop turn. It is provably committed when the client
// saw the whole response and then sent another request that got a
// response: jobgate read that request in a later loop turn, so it was alive
// after the commit.
//
// A second jobgate shares the cache_dir and stays up through all cycles.
// Without it, the restart would be the only process to open the
// environment, and LMDB resets the reader table of a lock file that no
// process holds, which would clear the stale slot before jobgate looks.
//
// Two more cases fill the cache: a map at the 1 MiB minimum with large
// bodies, and a 2 MiB tmpfs as cache_dir with a larger map. Clients must be
// served either way, and the counters must show the evictions, drops or
// errors.
//
// The kill points and job orgs are random: the seed is printed and taken
// from JG_TEST_SEED when set.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { JOB_PATH, keyHeader, makeTempDir, startJobgate } from './harness.mjs';
import { createGate, startUpstream } from './upstream.mjs';

// JG_CRASH_CYCLES makes a longer soak run of the same test.
const CYCLES = Number(process.env.JG_CRASH_CYCLES ?? 20);
const WORKERS = 6;
// Responses seen before the kill, drawn per cycle.
const KILL_AFTER_MIN = 8;
const KILL_AFTER_MAX = 30;
const MAX_REQUESTS_PER_CYCLE = 200;
const STORED = 'jobgate; fwd=miss; fwd-status=200; stored';
const HIT = 'jobgate; hit';
const KEY_OF_ORG = { A: 'A1', B: 'B1' };

const SEED = Number(process.env.JG_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31));
console.log(`# crash test seed: ${SEED} (set JG_TEST_SEED=${SEED} to repeat)`);

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

// A job whose request_data carries padBytes of filler, for larger entries.
function createPaddedJob(up, org, padBytes, status = 'completed') {
  return up.createJob({
    org,
    status,
    requestData: { metadata_key: 'customer_id', metadata_value: `pad-${padBytes}`, pad: 'x'.repeat(padBytes) },
  });
}

// The PIDs in the reader table of an LMDB environment, from mdb_stat -r.
// mdb_stat exits 1 after printing the table, so its status is ignored.
function readerPids(dir) {
  const out = spawnSync('mdb_stat', ['-r', dir], { encoding: 'utf8' });
  if (out.error) {
    throw out.error;
  }
  assert.match(out.stdout, /Reader Table Status/, `mdb_stat -r ${dir}: ${out.stdout}${out.stderr}`);
  // A process has one slot per worker, and each pid is listed once here.
  const pids = new Set();
  for (const line of out.stdout.split('\n')) {
    const m = /^\s+(\d+)\s+[0-9a-f]+\s+(\S+)\s*$/.exec(line);
    if (m) {
      pids.add(Number(m[1]));
    }
  }
  return [...pids].sort((x, y) => x - y);
}

async function prove(jg, up, org) {
  const proof = up.createJob({ org, status: 'in_progress' });
  const res = await jg.get(JOB_PATH(proof), { headers: keyHeader(up, KEY_OF_ORG[org]) });
  assert.equal(res.status, 200, `proof for org ${org}`);
}

describe('kill -9 under write load', () => {
  let up;
  let sibling;
  let cacheDir;
  const random = makeRandom(SEED);

  before(async () => {
    up = await startUpstream();
    cacheDir = makeTempDir('jg-crash-');
    sibling = await startJobgate({ upstreamUrl: up.url, cacheDir });
  });

  after(async () => {
    await sibling?.stopChecked();
    await up?.close();
  });

  // Drives distinct completed jobs through jg with WORKERS clients until
  // killAfter responses are in, then kills jg. Returns every request that
  // got a response, with its send and completion order.
  async function loadAndKill(jg, killAfter) {
    let clock = 0;
    let issued = 0;
    let killed = false;
    const answered = [];

    const worker = async () => {
      while (!killed && issued < MAX_REQUESTS_PER_CYCLE) {
        issued += 1;
        const org = random() < 0.5 ? 'A' : 'B';
        const id = createPaddedJob(up, org, 500 + Math.floor(random() * 6000));
        const sentSeq = ++clock;
        let res;
        try {
          res = await jg.get(JOB_PATH(id), { headers: keyHeader(up, KEY_OF_ORG[org]), timeoutMs: 5000 });
        } catch (err) {
          if (killed) {
            return;
          }
          throw err;
        }
        answered.push({ id, org, sentSeq, doneSeq: ++clock, res });
        if (!killed && answered.length >= killAfter) {
          killed = true;
          jg.kill('SIGKILL');
        }
      }
    };
    await Promise.all(Array.from({ length: WORKERS }, worker));
    assert.ok(killed, `the cycle ended after ${issued} requests without a kill`);
    await jg.exitPromise;
    assert.equal(jg.exitSignal, 'SIGKILL');
    return answered;
  }

  // Jobs whose stored response was seen before a later request got its response.
  function provablyStored(answered) {
    const lastSent = Math.max(...answered.map((a) => a.sentSeq));
    return answered.filter((a) => a.res.status === 200
      && a.res.headers['cache-status'] === STORED
      && a.doneSeq < lastSent);
  }

  async function assertServedAsHits(jg, entries, what) {
    for (const e of entries) {
      const before_ = up.jobCount(e.id);
      const res = await jg.get(JOB_PATH(e.id), { headers: keyHeader(up, KEY_OF_ORG[e.org]) });
      assert.equal(res.status, 200, `${what}: job ${e.id}`);
      assert.equal(res.headers['cache-status'], HIT, `${what}: job ${e.id} was acknowledged as stored but is not cached`);
      assert.equal(res.body, up.jobBody(e.id), `${what}: job ${e.id} body`);
      assert.equal(up.jobCount(e.id), before_);
    }
  }

  test(`${CYCLES} SIGKILL cycles keep every committed entry`, async () => {
    let previous = null;
    const allProven = [];
    let provenTotal = 0;
    let answeredTotal = 0;

    for (let cycle = 0; cycle <= CYCLES; cycle++) {
      // One loop: an answer seen before a later request was sent proves
      // the commit of its loop turn only when one loop serves them all.
      const jg = await startJobgate({ upstreamUrl: up.url, cacheDir, flags: { auth_ttl: 3600, workers: 1 } });
      const what = `cycle ${cycle}`;

      if (previous !== null) {
        // The killed process's slot is cleared at open; the sibling's and
        // the new process's own slots remain.
        const cleared = jg.lines.find((l) => /cleared \d+ stale reader slots/.test(l));
        assert.ok(cleared, `${what}: no stale reader slot was cleared at open; stderr:\n${jg.stderrTail()}`);
        assert.deepEqual(readerPids(cacheDir), [sibling.pid, jg.pid].sort((x, y) => x - y), `${what}: reader table`);

        await prove(jg, up, 'A');
        await prove(jg, up, 'B');
        await assertServedAsHits(jg, previous.proven, what);

        // The rest may or may not have been committed, but each is whole.
        for (const e of previous.unproven) {
          const res = await jg.get(JOB_PATH(e.id), { headers: keyHeader(up, KEY_OF_ORG[e.org]) });
          assert.equal(res.status, 200, `${what}: job ${e.id}`);
          assert.ok([HIT, STORED].includes(res.headers['cache-status']), `${what}: job ${e.id}: ${res.headers['cache-status']}`);
          assert.equal(res.body, up.jobBody(e.id));
        }
        assert.equal(await jg.metric('jobgate_cache_corrupt_total'), 0, `${what}: corrupt entries`);
      }

      if (cycle === CYCLES) {
        await assertServedAsHits(jg, allProven, 'after the last cycle');
        assert.equal(await jg.metric('jobgate_cache_corrupt_total'), 0);
        await jg.stopChecked();
        break;
      }

      const killAfter = KILL_AFTER_MIN + Math.floor(random() * (KILL_AFTER_MAX - KILL_AFTER_MIN + 1));
      const answered = await loadAndKill(jg, killAfter);
      for (const a of answered) {
        assert.equal(a.res.status, 200, `${what}: job ${a.id}`);
        assert.equal(a.res.body, up.jobBody(a.id));
      }
      assert.ok(readerPids(cacheDir).includes(jg.pid), `${what}: the killed process left no reader slot, so the restart proves nothing`);

      const proven = provablyStored(answered);
      const provenIds = new Set(proven.map((e) => e.id));
      previous = { proven, unproven: answered.filter((a) => !provenIds.has(a.id)) };
      allProven.push(...proven);
      provenTotal += proven.length;
      answeredTotal += answered.length;
    }
    console.log(`# ${CYCLES} cycles: ${answeredTotal} responses before the kills, ${provenTotal} provably committed, all served as hits after restart`);
    assert.ok(provenTotal > 0);
  });
});

describe('full cache', () => {
  let up;

  before(async () => {
    up = await startUpstream();
  });

  after(async () => {
    await up?.close();
  });

  // Sends every job id with its org's key, concurrency at a time, and
  // checks that each response is the job.
  async function driveJobs(jg, jobs, concurrency) {
    let next = 0;
    const statuses = [];
    const worker = async () => {
      while (next < jobs.length) {
        const { id, org } = jobs[next++];
        const res = await jg.get(JOB_PATH(id), { headers: keyHeader(up, KEY_OF_ORG[org]) });
        assert.equal(res.status, 200, `job ${id}: ${res.body.slice(0, 100)}`);
        assert.equal(res.body, up.jobBody(id));
        statuses.push(res.headers['cache-status']);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    return statuses;
  }

  async function cacheCounters(jg) {
    const m = await jg.metrics();
    const names = ['jobgate_stored_total', 'jobgate_cache_writes_total', 'jobgate_cache_evicted_total', 'jobgate_cache_write_dropped_total',
      'jobgate_cache_write_errors_total', 'jobgate_cache_entries', 'jobgate_cache_used_bytes'];
    return Object.fromEntries(names.map((n) => [n.replace(/^jobgate_(cache_)?/, ''), m.get(n) ?? 0]));
  }

  test('map at its 1 MiB minimum keeps clients served', async () => {
    const jg = await startJobgate({
      upstreamUrl: up.url,
      // One loop, so that the burst below lands in one loop turn and needs
      // 40 upstream connections of one pool.
      flags: { cache_max_bytes: '1m', max_body_bytes: '64k', auth_ttl: 3600, workers: 1 },
    });
    try {
      // One by one: 60 bodies of about 40 KiB, 2.4 MiB in all.
      const jobs = Array.from({ length: 60 }, (_, i) => ({ org: i % 2 ? 'A' : 'B', id: createPaddedJob(up, i % 2 ? 'A' : 'B', 40000) }));
      await driveJobs(jg, jobs, 4);

      // 40 responses released at once, so that one loop turn queues more
      // than the map holds.
      const burst = Array.from({ length: 40 }, () => ({ org: 'A', id: createPaddedJob(up, 'A', 40000) }));
      const gate = createGate();
      for (const { id } of burst) {
        up.addFault({ job: id, gate });
      }
      const pending = driveJobs(jg, burst, burst.length);
      try {
        await gate.waitArrivals(burst.length);
      } finally {
        gate.release();
      }
      await pending;

      const counters = await cacheCounters(jg);
      console.log(`# full map: ${JSON.stringify(counters)}`);
      assert.ok(counters.evicted_total + counters.write_dropped_total > 0, 'nothing was evicted or dropped');
      assert.equal(counters.write_errors_total, 0);
      assert.equal(counters.stored_total, jobs.length + burst.length);
      assert.equal(counters.writes_total + counters.write_dropped_total, counters.stored_total, 'a queued entry was neither written nor counted as dropped');
      assert.ok(counters.used_bytes <= 1024 * 1024);

      // The cache still takes and serves a new entry.
      const fresh = createPaddedJob(up, 'A', 40000);
      const stored = await jg.get(JOB_PATH(fresh), { headers: keyHeader(up, 'A1') });
      assert.equal(stored.headers['cache-status'], STORED);
      const hit = await jg.get(JOB_PATH(fresh), { headers: keyHeader(up, 'A1') });
      assert.equal(hit.headers['cache-status'], HIT);
      assert.equal(hit.body, up.jobBody(fresh));
      assert.equal((await jg.admin('/healthz')).status, 200);
    } finally {
      await jg.stopChecked();
    }
  });

  test('full disk keeps clients served', async (t) => {
    const mountPoint = makeTempDir('jg-tmpfs-');
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mountPoint], { stdio: 'pipe' });
    } catch (err) {
      fs.rmdirSync(mountPoint);
      t.skip(`cannot mount a 2 MiB tmpfs (${String(err.stderr ?? err.message).trim()}); run as root with mount permission`);
      return;
    }
    let jg;
    try {
      const cacheDir = path.join(mountPoint, 'cache');
      jg = await startJobgate({
        upstreamUrl: up.url,
        cacheDir,
        flags: { cache_max_bytes: '64m', max_body_bytes: '64k', auth_ttl: 3600 },
      });
      // 100 bodies of about 30 KiB: 3 MiB into a 2 MiB file system.
      const jobs = Array.from({ length: 100 }, (_, i) => ({ org: i % 2 ? 'A' : 'B', id: createPaddedJob(up, i % 2 ? 'A' : 'B', 30000) }));
      await driveJobs(jg, jobs, 4);

      const counters = await cacheCounters(jg);
      console.log(`# full disk: ${JSON.stringify(counters)}`);
      assert.ok(counters.write_errors_total + counters.write_dropped_total > 0, 'no write failed on a full disk');

      // Responses keep coming, from the cache or from the upstream.
      const again = await driveJobs(jg, jobs.slice(0, 10), 2);
      assert.equal(again.length, 10);
      assert.equal((await jg.admin('/healthz')).status, 200);
      await jg.stopChecked();
      jg = null;
    } finally {
      if (jg) {
        await jg.stop('SIGKILL');
      }
      execFileSync('umount', [mountPoint]);
      fs.rmdirSync(mountPoint);
    }
  });
});
