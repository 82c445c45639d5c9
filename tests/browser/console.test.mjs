// The operator console in headless Chromium. Started by
// tests/it/console.rs (browser_drives_the_console), which runs the real
// binary against the real services, fills the queues, and passes what to
// expect in the environment. With SCREENSHOTS=<dir> the pages are also saved
// as PNG (scripts/screenshots.sh, for docs/console.md and the README).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is set by tests/it/console.rs`);
  return v;
};
const CONSOLE = env("CONSOLE_URL");
const GUARDED = env("GUARDED_URL");
const SHOTS = process.env.SCREENSHOTS;

let browser;
let page;

before(async () => {
  browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
});

after(async () => {
  await browser?.close();
});

async function shot(name) {
  if (SHOTS) {
    await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  }
}

test("the overview shows the depth of the queues the test filled", async () => {
  const results = env("RESULTS_QUEUE");
  const want = env("RESULTS_DEPTH");
  // The page reloads itself every reading: poll it afresh until the
  // first readings are in.
  const cell = async (q) =>
    (await page.locator(`tr[data-queue="${q}"] td.depth`).first().textContent({ timeout: 5_000 }).catch(() => ""))
      .trim();
  const deadline = Date.now() + 30_000;
  let seen;
  for (;;) {
    await page.goto(CONSOLE + "/");
    seen = {
      results: await cell(results),
      dead: await cell(env("DEAD_QUEUE")),
      replicas: await page.locator("#replicas tbody tr").count(),
      rates: !(await page.locator("#as-of").textContent()).includes("after the next reading"),
      // For the pictures, wait for the replica's heartbeat after it started consuming.
      consuming: !SHOTS || (await page.locator("#replicas tbody td:nth-child(2)").allTextContents()).includes("consuming"),
    };
    if (seen.results === want && seen.dead === "5" && seen.replicas > 0 && seen.rates && seen.consuming) break;
    assert.ok(Date.now() < deadline, `the overview shows ${JSON.stringify(seen)}`);
    await new Promise((ok) => setTimeout(ok, 500));
  }
  await shot("overview");
});

test("a dead-letter group opens, previews and replays", async () => {
  const cls = env("REPLAY_CLASS");
  const count = env("REPLAY_COUNT");
  await page.goto(CONSOLE + "/dead-letters");
  const row = page.locator(`#groups tr[data-class="${cls}"]`);
  assert.equal(await row.count(), 1);
  assert.equal((await row.locator("td.n").textContent()).trim(), count);
  await shot("dead-letters");
  await row.getByRole("link", { name: "Open" }).click();
  await page.waitForURL(/\/dead-letters\/messages\?/);
  assert.equal(await page.locator("#messages tbody tr").count(), Number(count));
  // Metadata stays folded until asked for.
  assert.ok(!(await page.content()).includes("acme"));
  await page.locator("#messages details").first().click();
  await shot("group");
  await page.click("#preview-replay");
  await page.waitForURL(/\/dead-letters\/preview$/);
  const summary = await page.locator("#preview-summary").textContent();
  assert.match(summary, new RegExp(`^${count} of the \\d+ dead letters read would move`));
  assert.equal(await page.locator("#listing tbody tr").count(), Number(count));
  await shot("preview");
  await page.click("#run");
  await page.waitForURL(/\/dead-letters\/replay$/);
  const report = await page.locator("#report").textContent();
  assert.match(report, new RegExp(`moved to the jobs queue\\s*${count}`));
  assert.ok((await page.locator("h1").textContent()).includes("Replay done"));
});

test("the job lookup finds a job's attempts", async () => {
  const id = env("JOB_ID");
  await page.goto(CONSOLE + "/jobs");
  await page.fill('input[name="job_id"]', id);
  await page.click("#find");
  await page.waitForURL(/\/jobs\?job_id=/);
  assert.equal((await page.locator("#job-state .state").textContent()).trim(), "done");
  const attempts = page.locator("#outcome-attempts tbody tr");
  assert.ok((await attempts.count()) >= 1);
  const cells = await attempts.first().locator("td").allTextContents();
  assert.equal(cells[1], "argos");
  assert.equal(cells[2], "ok");
  await shot("job");
});

test("a request without credentials is refused", async () => {
  const anonymous = await browser.newContext();
  const p = await anonymous.newPage();
  // Headless Chromium cannot ask for credentials: it ends the navigation
  // (ERR_INVALID_AUTH_CREDENTIALS) after the console's 401.
  const answer = p.waitForResponse((r) => r.url() === GUARDED + "/");
  await p.goto(GUARDED + "/").catch(() => {});
  const r = await answer;
  assert.equal(r.status(), 401);
  assert.match(r.headers()["www-authenticate"], /^Basic /);
  await anonymous.close();
  const known = await browser.newContext({ httpCredentials: { username: "ops", password: "s3cret" } });
  const q = await known.newPage();
  const ok = await q.goto(GUARDED + "/");
  assert.equal(ok.status(), 200);
  await known.close();
});

test("a cross-site POST is refused and moves nothing", async () => {
  // Another origin's page that submits a replay form to the console as soon
  // as it loads (what a malicious page would do).
  const other = env("OTHER_CLASS");
  const attacker = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><form id=f method=post action="${CONSOLE}/dead-letters/replay">
      <input name=class value="${other}"><input name=csrf value="guessed"></form>
      <script>document.getElementById("f").submit()</script>`);
  });
  await new Promise((ok) => attacker.listen(0, "127.0.0.1", ok));
  const port = attacker.address().port;
  try {
    const p = await browser.newPage();
    const answer = p.waitForResponse((r) => r.url().endsWith("/dead-letters/replay"));
    // localhost vs 127.0.0.1: a different origin (and site) for the browser.
    await p.goto(`http://localhost:${port}/`);
    const r = await answer;
    assert.equal(r.status(), 403);
    assert.match(await r.text(), /cross-site|another origin/);
    await p.close();
  } finally {
    attacker.close();
  }
});
