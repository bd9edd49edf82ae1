// Browser test of joining a teammate over the LAN: two real `ensemble serve`
// hosts on 127.0.0.1, each with its owner's Chromium page (playwright-core
// driving Debian's /usr/bin/chromium):
//
//   alice   host A, shared on the LAN (--lan, TLS listener on 127.0.0.1,
//           announced by mDNS on `lo` only)
//   bea     host B, not shared; she browses, joins Alice's host and opens
//           Alice's VM through her own host's relay
//
// Alice's host also serves plain HTTP for browsers (--lan-insecure-http): a
// page reaching it by the machine's name (mapped to 127.0.0.1 inside the
// browser) warns that nothing is encrypted. Bea switches sharing on and off.
// Bea's Nearby panel lists Alice's host within 2 s; she joins; the
// verification code on her page equals the one on Alice's join request
// card; Alice approves; Bea opens Alice's VM (a banner says whose host it
// is), sees what Alice types in a shell, and drives once Alice grants her
// control; the host switcher takes her home and back in one click.
// Screenshots go to target/ui-test-output/lan-*.png.
//
// mDNS runs on `lo` only and everything binds 127.0.0.1: never the
// machine's real interfaces. Other hosts announced on `lo` (other people's
// tests) may be listed too: Alice's entry is told by its fingerprint.
//
// Run by `make browser` after the UI build and `cargo build`.
// ENSEMBLE_BIN overrides the binary (default target/debug/ensemble).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { STEP_TIMEOUT_MS, count, outDir, screen, startHost as startServe, status, waitFor } from "./harness.mjs";

/** The user story's promise: a shared host is listed within 2 s. */
const DISCOVERY_MS = 2000;

/**
 * Starts a host (on ephemeral ports unless told); resolves with its HTTP
 * base URL.
 * @param {string} dataDir
 * @param {string} name
 * @param {boolean} share
 * @param {{bind?: string, lanBind?: string, extra?: string[]}} [options]
 */
function startHost(dataDir, name, share, { bind = "127.0.0.1:0", lanBind = "127.0.0.1:0", extra = [] } = {}) {
  const args = ["--bind", bind, "--lan-bind", lanBind, "--mdns-interfaces", "lo", "--lan-name", name];
  if (share) args.push("--lan");
  return startServe(dataDir, [...args, ...extra], { env: { RUST_LOG: process.env.RUST_LOG ?? "warn" }, label: `host ${name}` });
}



const live = (page) => waitFor("the page to be live", async () => (await page.locator("[data-status]").getAttribute("data-status")) === "live");

async function holder(page) {
  const bar = page.locator(".control");
  const kind = await bar.getAttribute("data-holder-kind");
  return kind === "nobody" ? kind : `${kind}:${await bar.getAttribute("data-holder")}`;
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  for (const f of readdirSync(outDir)) if (/^lan-.*\.png$/.test(f)) rmSync(join(outDir, f));
  const dirA = mkdtempSync(join(tmpdir(), "ensemble-lan-a-"));
  const dirB = mkdtempSync(join(tmpdir(), "ensemble-lan-b-"));
  const hosts = [];
  let browser = null;
  let passed = 0;
  const pages = {};
  const step = async (name, f) => {
    const started = Date.now();
    try {
      await f();
    } catch (e) {
      for (const [who, p] of Object.entries(pages)) await p.screenshot({ path: join(outDir, `lan-failed-${name.replace(/\W+/g, "-")}-${who}.png`) }).catch(() => {});
      console.log(`${passed} passed, 1 failed`);
      throw e;
    }
    passed++;
    console.log(`ok ${passed} - ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  };
  const shot = (who, name) => pages[who].screenshot({ path: join(outDir, `lan-${name}-${who}.png`) });
  try {
    const a = await startHost(dirA, "Alice", true, { extra: ["--lan-insecure-http"] });
    hosts.push(a.child);
    const b = await startHost(dirB, "Bea", false);
    hosts.push(b.child);
    browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      // The machine's own name reaches 127.0.0.1 in this browser only: how
      // a teammate's browser would name Alice's host, without leaving lo.
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", `--host-resolver-rules=MAP ${hostname()} 127.0.0.1`],
    });
    const newPage = async (who) => {
      const context = await browser.newContext({ viewport: { width: 1400, height: 850 } });
      context.setDefaultTimeout(STEP_TIMEOUT_MS);
      const page = await context.newPage();
      page.on("pageerror", (e) => console.error(`${who}: page error: ${e.message}`));
      pages[who] = page;
      return page;
    };
    const alice = await newPage("alice");
    const bea = await newPage("bea");
    const token = (dir) => readFileSync(join(dir, "owner-token"), "utf8").trim();
    let aliceAddress = "";
    let aliceFp = "";

    await step("alice's host shares on the network; her page says where", async () => {
      await alice.goto(`${a.base}/#token=${encodeURIComponent(token(dirA))}`);
      await live(alice);
      const share = alice.locator('.people .share[data-sharing="true"]');
      await share.waitFor();
      if (!(await alice.getByRole("switch", { name: "Share on this network" }).isChecked())) throw new Error("the switch is off");
      aliceAddress = await share.locator("[data-lan-address]").first().getAttribute("data-lan-address");
      aliceFp = await share.locator("[data-fingerprint]").getAttribute("data-fingerprint");
      if (!/^127\.0\.0\.1:\d+$/.test(aliceAddress)) throw new Error(`address ${aliceAddress}`);
      if (!/^[0-9a-f]{64}$/.test(aliceFp)) throw new Error(`fingerprint ${aliceFp}`);
      await shot("alice", "01-sharing");
    });

    await step("a browser reaching alice's host by name over plain HTTP is warned", async () => {
      const plain = await alice.locator("[data-insecure-http]").getAttribute("data-insecure-http");
      const port = /:(\d+)$/.exec(plain)?.[1];
      if (!port) throw new Error(`plain HTTP address ${plain}`);
      const carol = await newPage("carol");
      await carol.goto(`http://${hostname()}:${port}/`);
      const banner = carol.locator("[data-insecure-banner]");
      await banner.getByText("Not encrypted.").waitFor();
      await carol.locator('[data-join-state="form"]').waitFor();
      await shot("carol", "02-not-encrypted");
      if ((await alice.locator("[data-insecure-banner]").count()) !== 0) throw new Error("alice's loopback page warns");
      await carol.context().close();
      delete pages.carol;
    });

    await step("bea's page: sharing is off; she switches it on and off again", async () => {
      await bea.goto(`${b.base}/#token=${encodeURIComponent(token(dirB))}`);
      await live(bea);
      const share = bea.locator(".people .share");
      await bea.locator('.people .share[data-sharing="false"]').waitFor();
      await share.locator("label.switch").click();
      await bea.locator('.people .share[data-sharing="true"]').waitFor();
      const address = await share.locator("[data-lan-address]").first().getAttribute("data-lan-address");
      if (!/^127\.0\.0\.1:\d+$/.test(address)) throw new Error(`bea's address ${address}`);
      await shot("bea", "02-sharing-on");
      await share.locator("label.switch").click();
      await bea.locator('.people .share[data-sharing="false"]').waitFor();
    });

    await step("bea opens Nearby: alice's host is listed within 2 s", async () => {
      const opened = Date.now();
      await bea.getByRole("button", { name: "Nearby" }).click();
      const entry = bea.locator(`[data-nearby-host][data-fingerprint="${aliceFp}"]`);
      await waitFor("alice's host in the list", () => entry.isVisible(), STEP_TIMEOUT_MS);
      const ms = Date.now() - opened;
      console.log(`  alice's host listed ${ms} ms after bea opened Nearby`);
      if (ms > DISCOVERY_MS) throw new Error(`alice's host took ${ms} ms to appear (limit ${DISCOVERY_MS} ms)`);
      if ((await entry.getAttribute("data-nearby-host")) !== "Alice") throw new Error("the entry does not say Alice");
      if ((await entry.getAttribute("data-address")) !== aliceAddress) throw new Error(`address ${await entry.getAttribute("data-address")} != ${aliceAddress}`);
      if ((await entry.getAttribute("data-paired")) !== "false") throw new Error("listed as paired before joining");
      // Bea's own host is not sharing, so not listed; nobody lists itself.
      await bea.locator("[data-lan-panel]").getByText("Enter an address").waitFor();
      await shot("bea", "02-nearby");
    });

    let code = "";
    await step("bea joins: both pages show the same verification code", async () => {
      await bea.locator(`[data-nearby-host][data-fingerprint="${aliceFp}"]`).getByRole("button", { name: "Join", exact: true }).click();
      const shown = bea.locator("[data-lan-panel] [data-verification-code]");
      await shown.waitFor();
      code = await shown.getAttribute("data-verification-code");
      if (!/^\d{3} \d{3}$/.test(code)) throw new Error(`code ${code}`);
      await bea.locator("[data-lan-panel]").getByText("Check that Alice sees the same code").waitFor();
      await bea.locator('[data-join-stage="verify"][data-join-waiting="true"]').waitFor();
      await bea.locator("[data-lan-panel]").getByText("Waiting for Alice to let you in").waitFor();
      const card = alice.locator('[data-join-request="Bea"]');
      await card.waitFor();
      const theirs = await card.getAttribute("data-code");
      if (theirs !== code) throw new Error(`alice's card shows ${theirs}, bea's page ${code}`);
      await card.getByText(`Does Bea's screen show`).waitFor();
      await card.locator(`[data-verification-code="${code}"]`).waitFor();
      console.log(`  verification code ${code} on both pages`);
      await shot("bea", "03-code");
      await shot("alice", "03-join-request");
    });

    let peerId = "";
    await step("alice approves; bea opens alice's VM through her host", async () => {
      const card = alice.locator('[data-join-request="Bea"]');
      await card.getByLabel("Role for Bea").selectOption("collaborator");
      await card.getByRole("button", { name: "Approve" }).click();
      await bea.locator('[data-join-stage="approved"]').waitFor();
      await bea.locator("[data-lan-panel]").getByText("Alice let you in").waitFor();
      await shot("bea", "04-approved");
      await bea.getByRole("button", { name: "Open Alice's VM" }).click();
      const banner = bea.locator("[data-host-banner]");
      await banner.waitFor();
      peerId = await banner.getAttribute("data-host-banner");
      await banner.getByText("On Alice's host").waitFor();
      await live(bea);
      const url = new URL(bea.url());
      if (url.searchParams.get("peer") !== peerId || url.origin !== b.base) throw new Error(`bea's URL ${bea.url()}`);
      await bea.locator(`.people li[data-role="owner"][data-connected="true"]`).waitFor();
      await bea.locator(`.people li[data-participant="Bea"][data-role="collaborator"][data-connected="true"]`).waitFor();
      await alice.locator(`.people li[data-participant="Bea"][data-role="collaborator"][data-connected="true"]`).waitFor();
      // Alice's page has no banner: she is on her own host.
      if ((await alice.locator("[data-host-banner]").count()) !== 0) throw new Error("alice's page shows a peer banner");
      await shot("bea", "05-on-alices-host");
    });

    await step("alice types in a shell; bea sees the same bytes through the relay", async () => {
      await alice.getByRole("button", { name: "Take control" }).click();
      await alice.locator(".control").getByText("you are driving").waitFor();
      await alice.getByRole("button", { name: "+ Shell" }).click();
      await alice.locator(".shell .xterm").waitFor();
      await waitFor("a prompt", async () => (await screen(alice)).length > 0);
      await alice.locator(".shell .xterm").click();
      await alice.keyboard.type("echo from-$((6*7))-alice\n");
      await waitFor("alice's echo", async () => (await screen(alice)).includes("from-42-alice"));
      await bea.getByRole("tab", { name: /Shell 1/ }).click();
      await bea.locator(".shell .xterm").waitFor();
      const want = await screen(alice);
      await waitFor("bea's screen to match alice's", async () => (await screen(bea)) === want);
      await shot("bea", "06-alices-shell");
    });

    await step("bea asks for control, alice grants it, bea drives alice's shell", async () => {
      await bea.getByRole("button", { name: "Request control" }).click();
      const ask = alice.locator(".control .ask").filter({ hasText: "Bea" });
      await ask.waitFor();
      const beaId = await ask.getAttribute("data-request");
      await ask.getByRole("button", { name: "Grant" }).click();
      for (const p of [alice, bea]) await waitFor("bea to hold control", async () => (await holder(p)) === `person:${beaId}`);
      await bea.locator(".shell .driving").waitFor();
      await bea.locator(".shell .xterm").click();
      await bea.keyboard.type("echo bea-$((5+5))-via-relay\n");
      await waitFor("bea's command on alice's screen", async () => (await screen(alice)).includes("bea-10-via-relay"));
      await waitFor("bea's echo on her page", async () => (await screen(bea)).includes("bea-10-via-relay"));
      const want = await screen(alice);
      await waitFor("the same screen on both", async () => (await screen(bea)) === want);
      if (count(want, "bea-10-via-relay") !== 1 || count(want, "from-42-alice") !== 1) throw new Error(`screen:\n${want}`);
      await shot("bea", "07-bea-drives");
      await shot("alice", "07-bea-drives");
    });

    await step("alice's host restarts: bea's page waits, resumes, nothing lost or repeated", async () => {
      const before = await status(bea);
      const exited = new Promise((r) => a.child.once("exit", r));
      a.child.kill("SIGTERM");
      await exited;
      // The relay closes; reconnecting, it cannot reach the peer: the page
      // says so and keeps trying (it had been in), it does not give up.
      await waitFor("bea's page to notice", async () => (await status(bea)).status !== "live");
      await waitFor("the reason on bea's page", async () => ((await bea.locator("header .error").textContent()) ?? "").includes("peer_unavailable"));
      await shot("bea", "08-alice-gone");
      if ((await bea.locator("[data-relay-state]").count()) !== 0) throw new Error("bea's page gave up");
      const again = await startHost(dirA, "Alice", true, { bind: new URL(a.base).host, lanBind: aliceAddress, extra: ["--lan-insecure-http"] });
      hosts.push(again.child);
      a.child = again.child;
      await live(alice);
      await live(bea);
      await alice.getByRole("button", { name: "Take control" }).click();
      await alice.locator(".control").getByText("you are driving").waitFor();
      await alice.getByRole("button", { name: "+ Shell" }).click();
      await alice.locator(".shell .xterm").waitFor();
      await waitFor("a prompt", async () => (await screen(alice)).length > 0);
      await alice.locator(".shell .xterm").click();
      await alice.keyboard.type("echo after-$((1+1))-restart\n");
      await waitFor("alice's echo", async () => (await screen(alice)).includes("after-2-restart"));
      await bea.getByRole("tab", { name: /Shell 2/ }).click();
      const want = await screen(alice);
      await waitFor("bea's screen to match alice's", async () => (await screen(bea)) === want);
      await waitFor("bea at alice's seq", async () => (await status(bea)).lastSeq === (await status(alice)).lastSeq);
      const after = await status(bea);
      if (after.lastSeq <= before.lastSeq) throw new Error(`bea's seq went from ${before.lastSeq} to ${after.lastSeq}`);
      if (after.duplicates !== before.duplicates) throw new Error(`bea's page dropped ${after.duplicates - before.duplicates} repeated events`);
      await shot("bea", "08-resumed");
    });

    await step("the host switcher: home and back to alice's VM in one click each", async () => {
      await bea.getByLabel("Host", { exact: true }).selectOption("");
      await waitFor("the banner to go", async () => (await bea.locator("[data-host-banner]").count()) === 0);
      await live(bea);
      if (new URL(bea.url()).searchParams.has("peer")) throw new Error(`bea's URL ${bea.url()}`);
      await bea.locator('.people li[data-role="owner"]').getByText("(you)").waitFor();
      await shot("bea", "09-home");
      await bea.getByLabel("Host", { exact: true }).selectOption(peerId);
      await bea.locator("[data-host-banner]").waitFor();
      await live(bea);
      await bea.getByRole("tab", { name: /Shell 2/ }).click();
      await waitFor("alice's shell again", async () => (await screen(bea)).includes("after-2-restart"));
      await shot("bea", "09-back-on-alices-host");
    });

    await step("the paired host is marked in Nearby, with Open", async () => {
      await bea.getByRole("button", { name: "Nearby" }).click();
      const entry = bea.locator(`[data-nearby-host][data-fingerprint="${aliceFp}"][data-paired="true"]`);
      await entry.waitFor();
      await bea.locator(`[data-lan-panel] [data-peer="${peerId}"]`).waitFor();
      await shot("bea", "10-paired");
      await bea.getByRole("button", { name: "Close Nearby" }).click();
      await waitFor("the panel to close", async () => (await bea.locator("[data-lan-panel]").count()) === 0);
    });

    await step("alice's host comes back with another certificate: a hard stop, said clearly", async () => {
      await bea.locator("[data-host-banner]").waitFor();
      await live(bea);
      const exited = new Promise((r) => a.child.once("exit", r));
      a.child.kill("SIGTERM");
      await exited;
      // A new install identity answers on the same address.
      for (const f of ["identity-cert.der", "identity-key.der"]) rmSync(join(dirA, f), { force: true });
      const again = await startHost(dirA, "Alice", true, { bind: new URL(a.base).host, lanBind: aliceAddress, extra: ["--lan-insecure-http"] });
      hosts.push(again.child);
      a.child = again.child;
      const card = bea.locator('[data-relay-state="refused"]');
      await card.waitFor();
      await card.getByText("presented a different certificate").waitFor();
      await new Promise((r) => setTimeout(r, 1500));
      if ((await card.count()) !== 1) throw new Error("the refusal did not stay");
      await shot("bea", "11-fingerprint-changed");
      await card.getByRole("button", { name: "Back to this computer" }).click();
      await live(bea);
    });

    await step("a forgotten host: the relay refuses, the page says why and stops", async () => {
      await bea.getByRole("button", { name: "Nearby" }).click();
      const paired = bea.locator(`[data-lan-panel] [data-peer="${peerId}"]`);
      await paired.getByRole("button", { name: "Forget", exact: true }).click();
      await paired.getByRole("button", { name: "Yes, forget" }).click();
      await waitFor("the pairing to go", async () => (await bea.locator(`[data-lan-panel] [data-peer="${peerId}"]`).count()) === 0);
      await bea.getByRole("button", { name: "Close Nearby" }).click();
      await bea.goto(`${b.base}/?peer=${peerId}`);
      const card = bea.locator('[data-relay-state="refused"]');
      await card.waitFor();
      await card.getByText("not paired with that host").waitFor();
      await bea.locator("[data-host-banner]").waitFor();
      // It stays refused: no reconnect loop.
      await new Promise((r) => setTimeout(r, 1500));
      if ((await card.count()) !== 1) throw new Error("the refusal did not stay");
      await shot("bea", "12-refused");
      await card.getByRole("button", { name: "Back to this computer" }).click();
      await live(bea);
    });

    await step("a join link with a join code: bea joins alice's host without approval", async () => {
      // Alice's page learns her host's new certificate (step above).
      await waitFor("alice's new fingerprint", async () => {
        const fp = await alice.locator(".people .share [data-fingerprint]").getAttribute("data-fingerprint");
        return fp !== aliceFp && /^[0-9a-f]{64}$/.test(fp ?? "") ? fp : null;
      });
      const newFp = await alice.locator(".people .share [data-fingerprint]").getAttribute("data-fingerprint");
      await alice.getByLabel("Role for the join code").selectOption("collaborator");
      await alice.getByRole("button", { name: "Create join code" }).click();
      const link = await alice.getByLabel("Ensemble join link").inputValue();
      if (!link.startsWith(`ensemble://${aliceAddress}/#fp=${newFp}&code=`)) throw new Error(`link ${link}`);
      await shot("alice", "13-join-link");
      await bea.getByRole("button", { name: "Nearby" }).click();
      await bea.getByLabel("Address or join link").fill(link);
      await bea.locator("[data-lan-panel] form").getByRole("button", { name: "Join" }).click();
      await bea.locator('[data-join-stage="approved"]').waitFor();
      await shot("bea", "13-joined-with-link");
      await bea.locator("[data-lan-panel]").getByRole("button", { name: /^Open .*VM$/ }).click();
      await bea.locator("[data-host-banner]").waitFor();
      await live(bea);
      await bea.locator(`.people li[data-role="collaborator"][data-connected="true"]`).getByText("(you)").waitFor();
      if ((await alice.locator("[data-join-request]").count()) !== 0) throw new Error("a join code still asked alice");
    });
  } finally {
    await browser?.close();
    for (const c of hosts) c.kill("SIGTERM");
    rmSync(dirA, { recursive: true, force: true });
    rmSync(dirB, { recursive: true, force: true });
  }
  console.log(`${passed} passed, 0 failed`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
