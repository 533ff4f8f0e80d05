// An origin that delays every job answer by a fixed time, for the
// coalescing measurement of bench/bench.py. While the first request of a
// burst waits here, the other requests of the burst reach jobgate, and the
// counts below show how many of them jobgate forwarded.
//
// usage: node slow-origin.mjs PORT DELAY_MS ORG_ID BODY_TEMPLATE
//
// GET /v2/org-jobs/{id} answers 200 after DELAY_MS with the template's
// body for that id, status "completed". GET /counts answers at once with
// {"total": N, "jobs": {id: N, ...}}, the job requests received so far.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';

const [port, delayMs, orgId, templatePath] = process.argv.slice(2);
if (!templatePath) {
    console.error('usage: node slow-origin.mjs PORT DELAY_MS ORG_ID BODY_TEMPLATE');
    process.exit(2);
}
const template = readFileSync(templatePath, 'utf8')
    .replace('@ORG_ID@', orgId)
    .replace('@STATUS@', 'completed');
const jobPath = /^\/v2\/org-jobs\/([^/?]+)$/;
const counts = { total: 0, jobs: {} };

const server = createServer((req, res) => {
    const url = req.url.split('?')[0];
    const match = jobPath.exec(url);

    if (req.method === 'GET' && url === '/counts') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(counts));
        return;
    }
    if (req.method !== 'GET' || match === null) {
        res.writeHead(404, { 'Content-Type': 'application/json' });
        res.end('{"detail":"Not Found"}');
        return;
    }

    const id = match[1];
    counts.total += 1;
    counts.jobs[id] = (counts.jobs[id] || 0) + 1;
    setTimeout(() => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(template.replace('@JOB_ID@', id));
    }, Number(delayMs));
});

server.keepAliveTimeout = 75000;
server.listen(Number(port), '127.0.0.1', () => {
    console.log(`slow origin listening on 127.0.0.1:${port}`);
});
