// Browser test: the real `ensemble serve` on 127.0.0.1 and two Chromium pages
// (playwright-core driving Debian's /usr/bin/chromium) on the same VM. Page A
// opens a shell and types; page B shows the same screen; page B reloads and
// catches up with nothing lost or repeated; A types again and B sees it live.
// Screenshots of each step go to target/ui-test-output/.
//
// Run by `make test` after the UI build and `cargo build` (the host embeds
// ui/dist). ENSEMBLE_BIN overrides the binary (default target/debug/ensemble).
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.ENSEMBLE_BIN ?? join(root, "target/debug/ensemble");
const outDir = join(root, "target/ui-test-output");
const KEY = "e2e";
const STEP_TIMEOUT_MS = 20_000;

/**
 * The URL fragment that authenticates a page. Hosts with access control write
 * the owner token to DATA_DIR/owner-token; older hosts have none and need no
 * credential. This is the one place the test deals with auth.
 */
function credentialFragment(dataDir) {
  const file = join(dataDir, "owner-token");
  return existsSync(file) ? `#token=${encodeURIComponent(readFileSync(file, "utf8").trim())}` : "";
}

/** Starts the host on an ephemeral port; resolves with its HTTP base URL. */
function startHost(dataDir) {
  const child = spawn(bin, ["serve", "--bind", "127.0.0.1:0", "--data-dir", dataDir], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolvePromise, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error("host did not start in 20 s")), STEP_TIMEOUT_MS);
    child.once("exit", (code) => reject(new Error(`host exited with ${code}`)));
    lines.once("line", (line) => {
      clearTimeout(timer);
      const m = /ws:\/\/([^/\s]+)\//.exec(line);
      if (!m) return reject(new Error(`unexpected first line: ${line}`));
      resolvePromise({ child, base: `http://${m[1]}` });
    });
  });
}

/** The terminal's visible rows, trailing blanks dropped. */
async function screen(page) {
  const text = await page.locator(".shell .xterm-rows").innerText();
  const rows = text.replace(/\u00a0/g, " ").split("\n").map((l) => l.trimEnd());
  while (rows.length > 0 && rows[rows.length - 1] === "") rows.pop();
  return rows.join("\n");
}

const count = (text, word) => text.split(word).length - 1;

async function waitFor(what, f) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function status(page) {
  const el = page.locator("[data-status]");
  return {
    status: await el.getAttribute("data-status"),
    lastSeq: Number(await el.getAttribute("data-last-seq")),
    duplicates: Number(await el.getAttribute("data-duplicates")),
  };
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), "ensemble-ui-test-"));
  const { child, base } = await startHost(dataDir);
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  let passed = 0;
  const pages = [];
  const step = async (name, f) => {
    try {
      await f();
    } catch (e) {
      // What each page showed when the step failed.
      for (const [i, p] of pages.entries()) await p.screenshot({ path: join(outDir, `failed-${name.replace(/\W+/g, "-")}-${"ab"[i]}.png`) });
      console.log(`${passed} passed, 1 failed`);
      throw e;
    }
    passed++;
    console.log(`ok ${passed} - ${name}`);
  };
  try {
    const url = `${base}/?key=${KEY}${credentialFragment(dataDir)}`;
    // Separate contexts: separate localStorage, like two people.
    const a = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    const b = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    pages.push(a, b);
    for (const p of pages) p.on("pageerror", (e) => console.error(`page error: ${e.message}`));
    const shot = (page, name) => page.screenshot({ path: join(outDir, `${name}.png`) });

    await step("both pages connect", async () => {
      await Promise.all([a.goto(url), b.goto(url)]);
      for (const p of [a, b]) await waitFor("live", async () => (await status(p)).status === "live");
      await shot(a, "01-a-connected");
    });

    await step("page A opens a shell and types", async () => {
      const take = a.getByRole("button", { name: "Take control" });
      if (await take.isVisible()) await take.click();
      await a.getByRole("button", { name: "+ Shell" }).click();
      await a.locator(".shell .xterm").waitFor({ timeout: STEP_TIMEOUT_MS });
      await waitFor("a prompt", async () => (await screen(a)).length > 0);
      await a.locator(".shell .xterm").click();
      await a.keyboard.type("echo hello-from-a\n");
      await waitFor("the echo on A", async () => count(await screen(a), "hello-from-a") === 2);
      await shot(a, "02-a-typed");
    });

    let screenA = "";
    await step("page B shows the same screen", async () => {
      await b.getByRole("tab", { name: /Shell 1/ }).click();
      await b.locator(".shell .xterm").waitFor({ timeout: STEP_TIMEOUT_MS });
      screenA = await screen(a);
      await waitFor("B's screen to match A's", async () => (await screen(b)) === screenA);
      await shot(b, "03-b-same-screen");
    });

    await step("page B reloads and catches up, nothing lost or repeated", async () => {
      await b.reload();
      await waitFor("live after reload", async () => (await status(b)).status === "live");
      await b.getByRole("tab", { name: /Shell 1/ }).click();
      await waitFor("B's screen after reload", async () => (await screen(b)) === screenA);
      const [sa, sb] = [await status(a), await status(b)];
      if (sb.lastSeq !== sa.lastSeq) throw new Error(`B caught up to seq ${sb.lastSeq}, A is at ${sa.lastSeq}`);
      if (sb.duplicates !== 0) throw new Error(`B dropped ${sb.duplicates} duplicate events after reload`);
      await shot(b, "04-b-reloaded");
    });

    await step("after catching up, B follows A live", async () => {
      await a.locator(".shell .xterm").click();
      await a.keyboard.type("echo second-from-a\n");
      await waitFor("the second echo on A", async () => count(await screen(a), "second-from-a") === 2);
      const want = await screen(a);
      await waitFor("B to follow", async () => (await screen(b)) === want);
      if (count(await screen(b), "hello-from-a") !== 2) throw new Error("B's screen repeats or lost the first echo");
      await shot(b, "05-b-live");
    });
  } finally {
    await browser.close();
    child.kill("SIGTERM");
    rmSync(dataDir, { recursive: true, force: true });
  }
  console.log(`${passed} passed, 0 failed`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
