// What the browser tests share: where the binary and the screenshots are,
// starting a real host, and reading a page (terminal rows, status, tabs).
import { spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const bin = process.env.ENSEMBLE_BIN ?? join(root, "target/debug/ensemble");
export const outDir = join(root, "target/ui-test-output");
// Generous: the machine is shared and the host is a debug build.
export const STEP_TIMEOUT_MS = 60_000;

/**
 * Starts `ensemble serve` on an ephemeral loopback port with `dataDir` and
 * `extra` arguments; resolves with the child and its HTTP base URL.
 * @param {string} dataDir
 * @param {string[]} [extra]
 * @param {{env?: Record<string, string>, label?: string}} [options]
 */
export function startHost(dataDir, extra = [], { env = {}, label = "host" } = {}) {
  const args = ["serve", "--bind", "127.0.0.1:0", "--data-dir", dataDir, ...extra];
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...env } });
  return new Promise((resolvePromise, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`${label} did not start in time`)), STEP_TIMEOUT_MS);
    child.once("exit", (code) => reject(new Error(`${label} exited with ${code}`)));
    lines.once("line", (line) => {
      clearTimeout(timer);
      const m = /ws:\/\/([^/\s]+)\//.exec(line);
      if (!m) return reject(new Error(`unexpected first line: ${line}`));
      resolvePromise({ child, base: `http://${m[1]}` });
    });
  });
}

/** Visible rows of a terminal, trailing blanks dropped. */
export async function rows(locator) {
  const text = await locator.innerText();
  const lines = text.replace(/\u00a0/g, " ").split("\n").map((l) => l.trimEnd());
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines.join("\n");
}
export const screen = (page) => rows(page.locator(".shell .xterm-rows"));
export const count = (text, word) => text.split(word).length - 1;

/** Polls `f` until it returns something truthy; throws after `timeout`. */
export async function waitFor(what, f, timeout = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
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

/** What the page says of its connection. */
export async function status(page) {
  const el = page.locator("[data-status]");
  return {
    status: await el.getAttribute("data-status"),
    lastSeq: Number(await el.getAttribute("data-last-seq")),
    duplicates: Number(await el.getAttribute("data-duplicates")),
  };
}
export const live = (page) => waitFor("the page to be live", async () => (await status(page)).status === "live");
export const tab = (page, name) => page.getByRole("tab", { name }).click();
export const transcript = (page) => page.locator(".session .transcript").innerText();
