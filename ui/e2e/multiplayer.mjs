// Browser test: the real `ensemble serve` on 127.0.0.1 and three Chromium
// pages (playwright-core driving Debian's /usr/bin/chromium), each its own
// browser context, as three participants of one VM:
//
//   owner   the owner token from DATA_DIR/owner-token, as #token=
//   bea     a collaborator, joining with a code the owner creates in the UI
//   cy      a viewer, asking to join; the owner approves in the UI
//
// The owner opens a shell and types, the others see the same screen; the
// keys of those without control do nothing; bea requests control, the owner
// grants it and bea drives; bea hands a turn to the scripted agent and its
// messages, plan, tool call and terminal appear on every page; bea takes
// over mid-turn (the turn is cancelled, control is hers) and hands back with
// what she did in the shell; a page reloads and catches up with nothing lost
// or repeated; the owner's timeline scrubs back to the first command and
// shows that screen. Screenshots of each step go to target/ui-test-output/.
//
// Run by `make test` after the UI build and `cargo build` (the host embeds
// ui/dist). ENSEMBLE_BIN overrides the binary (default target/debug/ensemble).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { STEP_TIMEOUT_MS, count, live, outDir, rows, screen, startHost, status, tab, transcript, waitFor } from "./harness.mjs";

const KEY = "e2e";






/** Who the control bar says holds control: "nobody", or kind:id. */
async function holder(page) {
  const bar = page.locator(".control");
  const kind = await bar.getAttribute("data-holder-kind");
  return kind === "nobody" ? kind : `${kind}:${await bar.getAttribute("data-holder")}`;
}


async function main() {
  mkdirSync(outDir, { recursive: true });
  // Screenshots of an earlier run would read as this run's.
  for (const f of readdirSync(outDir)) if (/^(\d\d|failed)-.*\.png$/.test(f)) rmSync(join(outDir, f));
  const dataDir = mkdtempSync(join(tmpdir(), "ensemble-ui-test-"));
  const { child, base } = await startHost(dataDir);
  const ownerToken = readFileSync(join(dataDir, "owner-token"), "utf8").trim();
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  let passed = 0;
  const pages = {};
  const step = async (name, f) => {
    const started = Date.now();
    try {
      await f();
    } catch (e) {
      // What each page showed when the step failed.
      for (const [who, p] of Object.entries(pages)) await p.screenshot({ path: join(outDir, `failed-${name.replace(/\W+/g, "-")}-${who}.png`) }).catch(() => {});
      console.log(`${passed} passed, 1 failed`);
      throw e;
    }
    passed++;
    console.log(`ok ${passed} - ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  };
  const shot = (who, name) => pages[who].screenshot({ path: join(outDir, `${name}-${who}.png`) });
  const newPage = async (who) => {
    const context = await browser.newContext({ viewport: { width: 1400, height: 850 } });
    context.setDefaultTimeout(STEP_TIMEOUT_MS);
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`${who}: page error: ${e.message}`));
    pages[who] = page;
    return page;
  };
  try {
    const vmUrl = `${base}/?key=${KEY}`;
    const owner = await newPage("owner");
    const bea = await newPage("bea");
    const cy = await newPage("cy");
    const ids = {};

    await step("the owner connects with the owner token", async () => {
      await owner.goto(`${vmUrl}#token=${encodeURIComponent(ownerToken)}`);
      await live(owner);
      if (owner.url().includes("token")) throw new Error("the token stayed in the address bar");
      await owner.locator('.people li[data-role="owner"]').waitFor();
      await shot("owner", "01-connected");
    });

    await step("bea joins with a join code the owner created", async () => {
      await owner.getByLabel("Role for the join code").selectOption("collaborator");
      await owner.getByRole("button", { name: "Create join code" }).click();
      const link = await owner.getByLabel("Join link").inputValue();
      if (!link.startsWith(`${base}/`) || !link.includes("#join=")) throw new Error(`join link ${link}`);
      await shot("owner", "02-join-code");
      await bea.goto(link);
      await bea.getByLabel("Your name").fill("Bea");
      await bea.getByRole("button", { name: "Join", exact: true }).click();
      await live(bea);
      await owner.locator('.people li[data-participant="Bea"][data-role="collaborator"][data-connected="true"]').waitFor();
      await shot("bea", "02-joined");
    });

    await step("cy asks to join, waits, and the owner approves as viewer", async () => {
      await cy.goto(vmUrl);
      await cy.getByLabel("Your name").fill("Cy");
      await cy.getByRole("button", { name: "Request to join" }).click();
      await cy.locator('[data-join-state="waiting"]').waitFor();
      await shot("cy", "03-waiting");
      const request = owner.locator('[data-join-request="Cy"]');
      await request.getByLabel("Role for Cy").selectOption("viewer");
      await shot("owner", "03-join-request");
      await request.getByRole("button", { name: "Approve" }).click();
      await live(cy);
      await cy.locator(".control").getByText("you are a viewer").waitFor();
      for (const p of [owner, bea, cy]) await p.locator('.people li[data-participant="Cy"][data-role="viewer"]').waitFor();
      await shot("cy", "03-approved");
    });

    let firstSeq = 0;
    await step("the owner takes control, opens a shell and types", async () => {
      await owner.getByRole("button", { name: "Take control" }).click();
      await owner.locator('.control[data-holder-kind="person"]').getByText("you are driving").waitFor();
      ids.owner = await owner.locator(".control").getAttribute("data-holder");
      await waitFor("bea to see the owner driving", async () => (await holder(bea)) === `person:${ids.owner}`);
      await owner.getByRole("button", { name: "+ Shell" }).click();
      await owner.locator(".shell .xterm").waitFor();
      await waitFor("a prompt", async () => (await screen(owner)).length > 0);
      await owner.locator(".shell .xterm").click();
      await owner.keyboard.type("echo hello-from-owner\n");
      await waitFor("the echo on the owner's page", async () => count(await screen(owner), "hello-from-owner") === 2);
      firstSeq = (await status(owner)).lastSeq;
      await shot("owner", "04-typed");
    });

    await step("bea and cy see the same screen", async () => {
      const want = await screen(owner);
      for (const who of ["bea", "cy"]) {
        await tab(pages[who], /Shell 1/);
        await pages[who].locator(".shell .xterm").waitFor();
        await waitFor(`${who}'s screen to match the owner's`, async () => (await screen(pages[who])) === want);
        await shot(who, "05-same-screen");
      }
    });

    await step("keys of those without control do nothing", async () => {
      await bea.locator(".shell .readonly").getByText(/has control/).waitFor();
      await cy.locator(".shell .readonly").getByText("Viewers cannot type").waitFor();
      await bea.locator(".shell .xterm").click();
      await bea.keyboard.type("echo bea-was-here\n");
      await cy.locator(".shell .xterm").click();
      await cy.keyboard.type("echo cy-was-here\n");
      // Whatever they sent would be in the log before the owner's marker.
      await owner.locator(".shell .xterm").click();
      await owner.keyboard.type("echo marker-one\n");
      for (const p of [owner, bea, cy]) await waitFor("the marker", async () => count(await screen(p), "marker-one") === 2);
      for (const p of [owner, bea, cy]) {
        const text = await screen(p);
        if (text.includes("was-here")) throw new Error(`keys without control reached the shell:\n${text}`);
      }
      await shot("cy", "06-keys-ignored");
    });

    await step("bea requests control, the owner grants it, bea drives", async () => {
      await bea.getByRole("button", { name: "Request control" }).click();
      await bea.getByRole("button", { name: "Requested…" }).waitFor();
      const ask = owner.locator(".control .ask").filter({ hasText: "Bea" });
      await ask.waitFor();
      await shot("owner", "07-request");
      ids.bea = await ask.getAttribute("data-request");
      await ask.getByRole("button", { name: "Grant" }).click();
      for (const p of [owner, bea, cy]) await waitFor("bea to hold control", async () => (await holder(p)) === `person:${ids.bea}`);
      await bea.locator(".shell .driving").waitFor();
      await bea.locator(".shell .xterm").click();
      await bea.keyboard.type("echo from-bea\n");
      await waitFor("bea's echo", async () => count(await screen(bea), "from-bea") === 2);
      const want = await screen(bea);
      for (const p of [owner, cy]) await waitFor("the others to see bea's command", async () => (await screen(p)) === want);
      await shot("bea", "07-bea-drives");
      await shot("owner", "07-bea-drives");
    });

    await step("bea hands a turn to the scripted agent; every page shows it", async () => {
      await tab(bea, "Session");
      await bea.getByLabel("Agent", { exact: true }).selectOption("scripted");
      await bea.getByRole("button", { name: "New session" }).click();
      await bea.locator(".session .bar button.active").waitFor();
      await bea.getByLabel("Prompt to hand to the agent").fill("say hi\nplan a; b\nrun echo from-agent");
      await bea.getByRole("button", { name: "Hand to agent" }).click();
      for (const [who, p] of Object.entries(pages)) {
        await tab(p, "Session");
        await waitFor(`${who}: the agent's message, plan and tool call`, async () => {
          const text = await transcript(p);
          return /\bhi\b/.test(text) && text.includes("run echo from-agent") && (await p.locator(".session .plan li.completed").count()) === 2;
        });
        await p.locator(".session .tool.completed").waitFor();
        await shot(who, "08-agent-turn");
        await tab(p, "Processes");
        await p.locator(".procs pre.log").getByText("from-agent").waitFor();
        await shot(who, "08-agent-terminal");
      }
      await bea.locator('[data-turn-end="end_turn"]').waitFor();
      for (const p of [owner, bea, cy]) await waitFor("control back with bea", async () => (await holder(p)) === `person:${ids.bea}`);
    });

    await step("bea takes over mid-turn: the turn is cancelled, control is hers", async () => {
      await tab(bea, "Session");
      await bea.getByLabel("Prompt to hand to the agent").fill("say waiting\nwait");
      await bea.getByRole("button", { name: "Hand to agent" }).click();
      for (const p of [owner, bea, cy]) await waitFor("the agent to drive", async () => (await holder(p)).startsWith("agent:"));
      await waitFor("the agent to wait", async () => (await transcript(bea)).includes("waiting"));
      await shot("owner", "09-agent-drives");
      await bea.getByRole("button", { name: "Take over from agent" }).click();
      await bea.locator('[data-turn-end="cancelled"]').waitFor();
      for (const p of [owner, bea, cy]) await waitFor("control with bea", async () => (await holder(p)) === `person:${ids.bea}`);
      await shot("bea", "09-took-over");
    });

    await step("bea types, then hands back with what she did in the shell", async () => {
      await tab(bea, /Shell 1/);
      await bea.locator(".shell .driving").waitFor();
      await bea.locator(".shell .xterm").click();
      await bea.keyboard.type("echo after-takeover\n");
      await waitFor("bea's echo", async () => count(await screen(bea), "after-takeover") === 2);
      await tab(bea, "Session");
      await bea.getByLabel("Prompt to hand to the agent").fill("say back again");
      await bea.getByLabel("include what I did in the shells").check();
      await bea.getByRole("button", { name: "Hand to agent" }).click();
      await bea.locator('[data-turn-end="end_turn"]').waitFor();
      for (const p of [owner, cy]) {
        await tab(p, "Session");
        await waitFor("the hand-back on every page", async () => {
          const text = await transcript(p);
          return text.includes("back again") && text.includes("While you were paused");
        });
        // The transcript says who handed the turn and that the shell
        // context went with it.
        await p.locator(".prompt-item", { hasText: "say back again" }).getByText("with shell context").waitFor();
        await p.locator(".prompt-item", { hasText: "say back again" }).locator(".author", { hasText: "Bea" }).waitFor();
      }
      await shot("cy", "10-hand-back");
    });

    await step("cy reloads and catches up, nothing lost or repeated", async () => {
      const want = await transcript(owner);
      await cy.reload();
      await live(cy);
      await tab(cy, "Session");
      await waitFor("cy's transcript after reload", async () => (await transcript(cy)) === want);
      await tab(cy, /Shell 1/);
      await tab(owner, /Shell 1/);
      await waitFor("the owner's screen", async () => count(await screen(owner), "after-takeover") === 2);
      const screenOwner = await screen(owner);
      await waitFor("cy's screen after reload", async () => (await screen(cy)) === screenOwner).catch(async (e) => {
        throw new Error(`${e.message}\nowner: ${JSON.stringify(screenOwner)}\ncy:    ${JSON.stringify(await screen(cy))}`);
      });
      await waitFor("cy at the owner's seq", async () => {
        const [so, sc] = [await status(owner), await status(cy)];
        return sc.lastSeq === so.lastSeq;
      });
      const sc = await status(cy);
      if (sc.duplicates !== 0) throw new Error(`cy dropped ${sc.duplicates} duplicate events after reload`);
      if (count(await screen(cy), "hello-from-owner") > 2) throw new Error("cy's screen repeats the first command");
      await shot("cy", "11-reloaded");
    });

    await step("the timeline scrubs back to the first command's screen", async () => {
      await tab(owner, "History");
      const slider = owner.getByLabel("Timeline");
      await waitFor("the log to load", async () => Number(await slider.getAttribute("max")) > 0);
      // The slider moves by event; find the last one at or before firstSeq.
      const seqAt = async (i) => {
        await slider.evaluate((el, v) => {
          if (!(el instanceof HTMLInputElement)) throw new Error("the timeline is not an input");
          el.value = String(v);
          el.dispatchEvent(new Event("input", { bubbles: true }));
        }, i);
        return Number(await owner.locator(".history .pos").getAttribute("data-seq"));
      };
      let lo = 0;
      let hi = Number(await slider.getAttribute("max"));
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        if ((await seqAt(mid)) <= firstSeq) lo = mid;
        else hi = mid - 1;
      }
      await seqAt(lo);
      const then = owner.locator(".history .screen .xterm-rows");
      await waitFor("the screen as of the first command", async () => {
        const text = await rows(then);
        return count(text, "hello-from-owner") === 2 && !text.includes("from-bea") && !text.includes("marker-one");
      });
      await shot("owner", "12-timeline");
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
