// The agent picker and API keys in Chromium against a real host
// (target/debug/ensemble, which embeds ui/dist: build both first).
//
// Always: a host whose D-Bus session address leads nowhere (no keyring, as on
// CI): the picker says which agents are installed and which need a key,
// "Save key…" shows the no-keyring message, and a session starts anyway.
// With ENSEMBLE_TEST_KEYRING=1 (scripts/keyring-test.sh runs this inside a
// private D-Bus session with gnome-keyring): a second host, where `claude` is
// the scripted agent, saves a key from the page, starts a session with "Use
// saved key", and the agent says ANTHROPIC_API_KEY is set; then forgets it.
// Screenshots go to target/ui-test-output/keys-*.png.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";
import { bin, outDir, startHost as startServe } from "./harness.mjs";

const TIMEOUT_MS = 60_000;
const SECRET = "sk-ant-e2e-key-never-shown-5150";

/** A host for VM "keys"; resolves with the page URL that signs in as its owner. */
async function startHost(dataDir, extraArgs, env) {
  const { child, base } = await startServe(dataDir, extraArgs, { env });
  const token = readFileSync(join(dataDir, "owner-token"), "utf8").trim();
  return { child, url: `${base}/?key=keys#token=${encodeURIComponent(token)}` };
}

function check(cond, what) {
  if (!cond) throw new Error(`failed: ${what}`);
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  for (const f of readdirSync(outDir)) if (/^keys-.*\.png$/.test(f)) rmSync(join(outDir, f));
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    // The keyring's D-Bus session is the hosts', not the browser's.
    env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: "" },
  });
  const children = [];
  const dirs = [];
  let passed = 0;
  const ok = (name) => console.log(`ok ${++passed} - ${name}`);
  const open = async (url) => {
    const context = await browser.newContext({ viewport: { width: 1400, height: 850 } });
    context.setDefaultTimeout(TIMEOUT_MS);
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
    await page.goto(url);
    await page.locator('[data-status="live"]').waitFor();
    await page.locator(".first-run").getByRole("button", { name: "Start driving" }).click();
    return page;
  };
  try {
    // No keyring.
    const dir = mkdtempSync(join(tmpdir(), "ensemble-keys-test-"));
    dirs.push(dir);
    const host = await startHost(dir, [], { DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(dir, "no-bus")}`, DISPLAY: "" });
    children.push(host.child);
    const page = await open(host.url);
    const select = page.getByLabel("Agent", { exact: true });
    await page.locator("option", { hasText: "scripted — installed" }).waitFor({ state: "attached" });
    const labels = await select.locator("option").allInnerTexts();
    check(labels[0] === "scripted — installed", `scripted first and installed: ${labels}`);
    check(
      labels.some((l) => /^claude — (downloads on first use|not installed), needs ANTHROPIC_API_KEY$/.test(l)),
      `claude needs ANTHROPIC_API_KEY: ${labels}`,
    );
    ok("the picker says which agents are installed and which need a key");
    await select.selectOption("claude");
    await page.locator(".key-needed", { hasText: "claude needs an API key (ANTHROPIC_API_KEY)" }).waitFor();
    await page.getByRole("button", { name: "Save key…" }).click();
    await page.locator(".no-keyring", { hasText: "no OS keyring is available" }).waitFor();
    await page.locator(".key-needed", { hasText: "It cannot be saved: no OS keyring is available" }).waitFor();
    await page.screenshot({ path: join(outDir, "keys-no-keyring.png") });
    ok("no keyring: Save key… says so, and the key can still be typed for one session");
    await select.selectOption("scripted");
    check((await page.locator(".key-needed").count()) === 0, "scripted needs no key");
    await page.getByRole("button", { name: "New session" }).click();
    await page.locator(".session .bar button.active").waitFor();
    ok("a scripted session starts without a key");

    if (process.env.ENSEMBLE_TEST_KEYRING) {
      const kdir = mkdtempSync(join(tmpdir(), "ensemble-keys-test-"));
      dirs.push(kdir);
      const agents = join(kdir, "agents.toml");
      const scripted = join(dirname(bin), "ensemble-scripted-agent");
      writeFileSync(agents, `[agents.claude]\ncommand = ${JSON.stringify(scripted)}\nargs = ["--journal-dir", "{stateDir}"]\n`);
      const khost = await startHost(join(kdir, "data"), ["--agents", agents], {});
      children.push(khost.child);
      const kpage = await open(khost.url);
      const kselect = kpage.getByLabel("Agent", { exact: true });
      await kpage.locator("option", { hasText: "claude — installed, needs ANTHROPIC_API_KEY" }).waitFor({ state: "attached" });
      await kselect.selectOption("claude");
      await kpage.getByRole("button", { name: "Save key…" }).click();
      await kpage.getByLabel("Key to save in the OS keyring").fill(SECRET);
      await kpage.getByRole("button", { name: "Save", exact: true }).click();
      await kpage.locator(".key-message", { hasText: "Key saved for claude" }).waitFor();
      await kpage.locator("option", { hasText: "needs ANTHROPIC_API_KEY (key saved)" }).waitFor({ state: "attached" });
      check(await kpage.getByLabel("Use saved key").isChecked(), "Use saved key is checked");
      await kpage.screenshot({ path: join(outDir, "keys-saved.png") });
      ok("the owner saves a key; the picker says it is saved");
      await kpage.getByRole("button", { name: "New session" }).click();
      await kpage.locator(".session .bar button.active").waitFor();
      const prompt = kpage.getByLabel("Prompt", { exact: true });
      await prompt.fill("env ANTHROPIC_API_KEY");
      await prompt.press("Enter");
      await kpage.locator(".session .transcript", { hasText: `env ANTHROPIC_API_KEY is set (${SECRET.length} chars)` }).waitFor();
      check(!(await kpage.content()).includes(SECRET), "the page never holds the key");
      ok("a session started with the saved key: the agent has ANTHROPIC_API_KEY");
      await kselect.selectOption("claude");
      await kpage.getByRole("button", { name: "Save key…" }).click();
      await kpage.getByRole("button", { name: "Forget saved key" }).click();
      await kpage.locator(".key-message", { hasText: "Saved key for claude forgotten" }).waitFor();
      await kpage.locator("option", { hasText: /^claude — installed, needs ANTHROPIC_API_KEY$/ }).waitFor({ state: "attached" });
      ok("the owner forgets the key");
    } else {
      console.log("# saved-key steps skipped: set ENSEMBLE_TEST_KEYRING=1 inside a D-Bus session with a keyring (scripts/keyring-test.sh)");
    }
    console.log(`${passed} passed`);
  } finally {
    await browser.close();
    for (const c of children) c.kill();
    await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once("exit", r)) : null)));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
