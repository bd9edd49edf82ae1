// Measures the UI under a flood of shell output: one page opens a shell that
// writes ~20 MiB/s for 5 s; the page records its animation frame times
// meanwhile, then a typed marker must echo. Prints the figures that
// docs/ui.md quotes. Not part of `make test` (it measures, it does not judge):
// `make ui && cargo build -p ensemble && node ui/e2e/perf.mjs`.
// PERF_SESSION=<chunks> also has a scripted session stream that many agent
// message chunks meanwhile (started from the Session tab; the Shell tab is
// shown during the measurement).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.ENSEMBLE_BIN ?? join(root, "target/debug/ensemble");
const RATE_MIB_S = 20;
const SECONDS = 5;
const SESSION_CHUNKS = Number(process.env.PERF_SESSION ?? 0);

const FLOOD = `import sys, time
line = (b"0123456789abcdef" * 6 + b"\\x1b[32mok\\x1b[0m\\n")
chunk = line * 1024
rate = ${RATE_MIB_S} * 2**20
start = time.time(); sent = 0
while time.time() - start < ${SECONDS}:
    sys.stdout.buffer.write(chunk); sys.stdout.flush(); sent += len(chunk)
    ahead = sent / rate - (time.time() - start)
    if ahead > 0: time.sleep(ahead)
sys.stderr.write("sent %d bytes in %.2f s\\n" % (sent, time.time() - start))
`;

const dataDir = mkdtempSync(join(tmpdir(), "ensemble-ui-perf-"));
const child = spawn(bin, ["serve", "--bind", "127.0.0.1:0", "--data-dir", dataDir], { stdio: ["ignore", "pipe", "inherit"] });
const first = await new Promise((r) => createInterface({ input: child.stdout }).once("line", r));
const base = `http://${/ws:\/\/([^/\s]+)\//.exec(String(first))?.[1]}`;
const tokenFile = join(dataDir, "owner-token");
const frag = existsSync(tokenFile) ? `#token=${encodeURIComponent(readFileSync(tokenFile, "utf8").trim())}` : "";
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(`${base}/?key=perf${frag}`);
  await page.waitForSelector('[data-status="live"]');
  const take = page.getByRole("button", { name: "Take control" });
  if (await take.isVisible()) await take.click();
  await page.getByRole("button", { name: "+ Shell" }).click();
  await page.locator(".shell .xterm").waitFor();
  writeFileSync(join(dataDir, "vms/1/workspace/flood.py"), FLOOD);
  await page.waitForTimeout(500);
  if (SESSION_CHUNKS > 0) {
    await page.getByRole("tab", { name: "Session" }).click();
    await page.getByLabel("Agent", { exact: true }).selectOption("scripted");
    await page.getByRole("button", { name: "New session" }).click();
    await page.locator(".session .bar button.active").waitFor();
    const prompt = page.getByLabel("Prompt", { exact: true });
    await prompt.fill(`stream ${SESSION_CHUNKS}`);
    await prompt.press("Enter");
    await page.getByRole("tab", { name: /Shell 1/ }).click();
    await page.locator(".shell .xterm").waitFor();
  }
  await page.locator(".shell .xterm").click();
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__frames = [];
    const tick = (/** @type {number} */ t) => {
      w.__frames.push(t);
      if (!w.__stopFrames) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  await page.keyboard.type("python3 flood.py\n");
  await page.waitForTimeout(SECONDS * 1000);
  const typedAt = Date.now();
  await page.keyboard.type("echo marker-$((6*7))\n");
  await page.waitForFunction(() => (document.querySelector(".shell .xterm-rows")?.textContent ?? "").includes("marker-42"), null, { timeout: 60_000 });
  const echoMs = Date.now() - typedAt;
  const frames = await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__stopFrames = true;
    return /** @type {number[]} */ (w.__frames);
  });
  const deltas = frames.slice(1).map((t, i) => t - /** @type {number} */ (frames[i])).sort((a, b) => a - b);
  const pct = (/** @type {number} */ p) => deltas[Math.min(deltas.length - 1, Math.floor(deltas.length * p))]?.toFixed(1);
  console.log(`frames: ${deltas.length}, frame time p50 ${pct(0.5)} ms, p95 ${pct(0.95)} ms, p99 ${pct(0.99)} ms, max ${deltas[deltas.length - 1]?.toFixed(1)} ms`);
  const skips = await page.locator(".shell .xterm").getAttribute("data-skips");
  if (SESSION_CHUNKS > 0) {
    const seq = await page.locator("[data-status]").getAttribute("data-last-seq");
    console.log(`session streaming ${SESSION_CHUNKS} chunks at the same time; the page's seq at the end: ${seq}`);
  }
  console.log(`marker typed after ${SECONDS} s of flood echoed in ${echoMs} ms; backlog skips to a snapshot: ${skips ?? "n/a"}`);
  await page.screenshot({ path: join(root, "target/ui-test-output/perf-flood.png") });
} finally {
  await browser.close();
  child.kill("SIGTERM");
  rmSync(dataDir, { recursive: true, force: true });
}
