// Browser test: can a person follow what happens (issue 13)? The real
// `ensemble serve` on 127.0.0.1 and two Chromium pages: the owner and Bea
// (a collaborator with a join code).
//
//   * a control request shows a toast with Grant/Deny and counts in the
//     window title; the denial reaches Bea as a toast
//   * typing right after "+ Shell" goes into the new shell's terminal and
//     opens no other shell
//   * Tab leaves a read-only terminal; Alt+1 leaves the one you drive; `?`
//     opens the shortcut help
//   * the transcript is turns: each prompt with its author, a boundary after
//     each turn, messages of two turns apart; the same on both pages
//   * the transcript sticks to the bottom during a stream; scrolled up, a
//     "new output" pill shows and jumps to the latest
//   * a permission request reaches the owner on the Shell tab: the focus
//     moves to it, the Session tab has a badge, the title counts it, it
//     reads as a diff, and the keyboard answers it
//   * History shows the same transcript as the live view
//   * an exited shell's tab can be closed; at 800 px the participants fold
//
// Screenshots go to target/ui-test-output/follow-*.png.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { STEP_TIMEOUT_MS, count, live, outDir, screen, startHost, tab, transcript, waitFor } from "./harness.mjs";

const KEY = "follow";



/** Where the focus is: "xterm" inside a terminal, else a short description. */
const focusIn = (page) =>
  page.evaluate(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return "body";
    if (el.closest(".xterm")) return "xterm";
    if (el.hasAttribute("data-permission")) return `permission:${el.getAttribute("data-permission")}`;
    return `${el.tagName.toLowerCase()}:${(el.textContent ?? "").trim().slice(0, 30)}`;
  });

async function main() {
  mkdirSync(outDir, { recursive: true });
  for (const f of readdirSync(outDir)) if (/^follow-.*\.png$/.test(f)) rmSync(join(outDir, f));
  const dataDir = mkdtempSync(join(tmpdir(), "ensemble-follow-test-"));
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
      for (const [who, p] of Object.entries(pages)) await p.screenshot({ path: join(outDir, `follow-failed-${name.replace(/\W+/g, "-")}-${who}.png`) }).catch(() => {});
      console.log(`${passed} passed, 1 failed`);
      throw e;
    }
    passed++;
    console.log(`ok ${passed} - ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  };
  const shot = (who, name) => pages[who].screenshot({ path: join(outDir, `follow-${name}-${who}.png`) });
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
    let ownerName = "";

    await step("the owner connects and Bea joins with a code", async () => {
      await owner.goto(`${vmUrl}#token=${encodeURIComponent(ownerToken)}`);
      await live(owner);
      ownerName = (await owner.locator('.people li[data-role="owner"]').getAttribute("data-participant")) ?? "";
      await owner.getByLabel("Role for the join code").selectOption("collaborator");
      await owner.getByRole("button", { name: "Create join code" }).click();
      const link = await owner.getByLabel("Join link").inputValue();
      await bea.goto(link);
      await bea.getByLabel("Your name").fill("Bea");
      await bea.getByRole("button", { name: "Join", exact: true }).click();
      await live(bea);
      await owner.getByRole("status").filter({ hasText: "Bea joined" }).waitFor();
      // The first screen says what to do and offers the button.
      await owner.locator(".first-run").getByText("take control first").waitFor();
      await shot("owner", "00-first-run");
      await owner.locator(".first-run").getByRole("button", { name: "Start driving" }).click();
      await owner.locator(".control").getByText("you are driving").waitFor();
      await owner.locator(".first-run").getByRole("button", { name: "Start a scripted session" }).waitFor();
      // Bea sees who drives in the participant list.
      await bea.locator('.people li[data-participant="Owner"] [data-driving]').waitFor();
    });

    await step("a control request: toast with Grant/Deny, a count in the title, the denial reaches Bea", async () => {
      if ((await owner.title()) !== "Ensemble") throw new Error(`title before: ${await owner.title()}`);
      await bea.getByRole("button", { name: "Request control" }).click();
      const toast = owner.locator('.toast[data-toast-kind="ask"]').filter({ hasText: "Bea asks for control" });
      await toast.waitFor();
      await waitFor("the title count", async () => (await owner.title()) === "(1) Bea asks for control — Ensemble");
      await shot("owner", "01-control-toast");
      await toast.getByRole("button", { name: "Deny" }).click();
      await bea.locator(".toast").filter({ hasText: "turned down your request" }).waitFor();
      await waitFor("the title without the count", async () => (await owner.title()) === "Ensemble");
      await shot("bea", "01-denied-toast");
    });

    await step("typing right after + Shell goes to the new terminal and opens no other shell", async () => {
      await owner.getByRole("button", { name: "+ Shell" }).click();
      // At once, before the terminal is there: these keys must not press
      // the button again.
      await owner.keyboard.type("   \n\n");
      await owner.locator(".shell .xterm").waitFor();
      await waitFor("the focus in the new terminal", async () => (await focusIn(owner)) === "xterm");
      await waitFor("a prompt", async () => (await screen(owner)).length > 0);
      await owner.keyboard.type("echo typed-after-open\n");
      await waitFor("the echo", async () => count(await screen(owner), "typed-after-open") === 2);
      await new Promise((r) => setTimeout(r, 500));
      const tabs = await owner.locator(".shell-tab").count();
      if (tabs !== 1) throw new Error(`${tabs} shell tabs after one + Shell`);
      await shot("owner", "02-new-shell-focused");
    });

    await step("shortcuts come before the terminal: Alt+1 leaves it, ? opens the help, Tab leaves a read-only terminal", async () => {
      await owner.locator(".shell .xterm").click();
      await owner.keyboard.press("Alt+1");
      await owner.locator(".session .bar").waitFor();
      await owner.keyboard.press("Alt+2");
      await owner.locator(".shell .xterm").waitFor();
      await owner.locator(".shell .xterm").click();
      await owner.keyboard.press("Alt+/");
      await owner.getByRole("dialog", { name: "Keyboard shortcuts" }).waitFor();
      await shot("owner", "03-help");
      await owner.keyboard.press("Escape");
      await owner.getByRole("dialog", { name: "Keyboard shortcuts" }).waitFor({ state: "detached" });
      // Bea does not drive: her terminal is read-only and Tab moves on.
      await tab(bea, /Shell 1/);
      await bea.locator(".shell .readonly").waitFor();
      // Who types there is on the terminal.
      await bea.locator('.shell [data-typist="Owner"]').waitFor();
      await bea.locator(".shell .xterm").click();
      if ((await focusIn(bea)) !== "xterm") throw new Error(`bea's click did not focus the terminal: ${await focusIn(bea)}`);
      await bea.keyboard.press("Tab");
      const after = await focusIn(bea);
      if (after === "xterm") throw new Error("Tab stayed in the read-only terminal");
      await bea.keyboard.press("?");
      await bea.getByRole("dialog", { name: "Keyboard shortcuts" }).waitFor();
      await bea.keyboard.press("Escape");
    });

    await step("the transcript is turns: prompts with their author, a boundary after each turn", async () => {
      await tab(owner, "Session");
      await owner.getByLabel("Agent", { exact: true }).selectOption("scripted");
      await owner.getByRole("button", { name: "New session" }).click();
      await owner.locator(".session .bar button.active").waitFor();
      const prompt = owner.getByLabel("Prompt", { exact: true });
      await prompt.fill("say hello from the scripted agent");
      await prompt.press("Enter");
      await owner.locator('.turn-end[data-turn="1"]').waitFor();
      await waitFor("the prompt box to be free", async () => !(await prompt.isDisabled()));
      await prompt.fill("say starting the job");
      await prompt.press("Enter");
      await owner.locator('.turn-end[data-turn="2"]').waitFor();
      for (const [who, p] of Object.entries(pages)) {
        await tab(p, "Session");
        await p.locator('.turn-end[data-turn="2"]').waitFor();
        const authors = await p.locator(".prompt-item .author").allInnerTexts();
        if (authors.join(",") !== `${ownerName},${ownerName}`) throw new Error(`${who}: prompt authors ${authors}`);
        const texts = await p.locator(".prompt-item .text").allInnerTexts();
        if (texts.join("|") !== "say hello from the scripted agent|say starting the job") throw new Error(`${who}: prompts ${texts}`);
        const messages = await p.locator(".msg.agent .text").allInnerTexts();
        if (messages.join("|") !== "hello from the scripted agent|starting the job") throw new Error(`${who}: messages ran together: ${JSON.stringify(messages)}`);
        const order = await p.locator(".transcript > *").evaluateAll((els) => els.map((e) => e.className.split(" ")[0]));
        if (order.join(",") !== "prompt-item,msg,turn-end,prompt-item,msg,turn-end") throw new Error(`${who}: order ${order}`);
        const name = await p.locator(".session .bar button.active").innerText();
        if (!name.includes("hello from the scripted agent")) throw new Error(`${who}: session name ${name}`);
      }
      await shot("bea", "04-turns");
    });

    await step("the transcript sticks to the bottom during a stream; scrolled up, a pill jumps to the latest", async () => {
      const scroller = owner.locator(".session .scroll");
      await owner.evaluate(() => {
        const el = /** @type {HTMLElement} */ (document.querySelector(".session .scroll"));
        const w = /** @type {any} */ (window);
        w.__gaps = [];
        w.__heights = [];
        w.__sampler = setInterval(() => {
          w.__gaps.push(el.scrollHeight - el.scrollTop - el.clientHeight);
          w.__heights.push(el.scrollHeight);
        }, 40);
      });
      const prompt = owner.getByLabel("Prompt", { exact: true });
      await prompt.fill("stream 150\nsleep 300\nstream 150\nsleep 300\nstream 150\nsleep 300\nsay done streaming");
      await prompt.press("Enter");
      await owner.locator('.turn-end[data-turn="3"]').waitFor();
      await new Promise((r) => setTimeout(r, 300));
      const { gaps, heights, client } = await owner.evaluate(() => {
        const w = /** @type {any} */ (window);
        clearInterval(w.__sampler);
        const el = /** @type {HTMLElement} */ (document.querySelector(".session .scroll"));
        return { gaps: /** @type {number[]} */ (w.__gaps), heights: /** @type {number[]} */ (w.__heights), client: el.clientHeight };
      });
      const grew = Math.max(...heights) - Math.min(...heights);
      if (grew < client) throw new Error(`the transcript grew by only ${grew}px`);
      const off = gaps.filter((g) => g > 32);
      if (off.length > 0) throw new Error(`left the bottom during the stream: ${off.length} of ${gaps.length} samples, up to ${Math.max(...off)}px`);
      await shot("owner", "05-stream-bottom");
      // Scrolled up: new output shows a pill instead of moving the reader.
      await scroller.evaluate((el) => {
        el.scrollTop = 0;
        el.dispatchEvent(new Event("scroll"));
      });
      await prompt.fill("say more output below");
      await prompt.press("Enter");
      await owner.locator('.turn-end[data-turn="4"]').waitFor();
      const pill = owner.getByRole("button", { name: "New output" });
      await pill.waitFor();
      const top = await scroller.evaluate((el) => el.scrollTop);
      if (top > 5) throw new Error(`the reader was moved to ${top}`);
      await shot("owner", "05-new-output-pill");
      await pill.click();
      await waitFor("the bottom", async () => scroller.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight < 32));
      await pill.waitFor({ state: "detached" });
    });

    await step("a permission request reaches the owner on the Shell tab, readable, answered by keyboard", async () => {
      const prompt = owner.getByLabel("Prompt", { exact: true });
      await prompt.fill("write todo.txt buy milk");
      await prompt.press("Enter");
      await owner.keyboard.press("Alt+2");
      await owner.locator(".shell .xterm").waitFor();
      const card = owner.locator(".dock [data-permission]");
      await card.waitFor();
      await waitFor("the focus on the request", async () => (await focusIn(owner)).startsWith("permission:"));
      const badge = await owner.locator("[data-pending]").getAttribute("data-pending");
      if (badge !== "1") throw new Error(`Session tab badge ${badge}`);
      await waitFor("the title count", async () => /^\(1\) scripted asks for permission — Ensemble$/.test(await owner.title()));
      if ((await card.getAttribute("data-kind")) !== "edit") throw new Error(`kind ${await card.getAttribute("data-kind")}`);
      const text = await card.innerText();
      if (!text.includes("todo.txt") || !text.includes("+ buy milk")) throw new Error(`the request reads:\n${text}`);
      // Bea sees it too, but cannot answer.
      await bea.locator(".dock [data-permission]").waitFor();
      if (!(await bea.locator(".dock button", { hasText: "Allow" }).isDisabled())) throw new Error("bea could answer");
      await shot("owner", "06-permission-from-shell-tab");
      await owner.keyboard.press("Tab");
      const focused = await focusIn(owner);
      if (focused !== "button:Allow") throw new Error(`Tab went to ${focused}`);
      await owner.keyboard.press("Enter");
      await card.waitFor({ state: "detached" });
      await waitFor("the title without the count", async () => (await owner.title()) === "Ensemble");
      await tab(owner, "Session");
      await owner.locator('.turn-end[data-turn="5"]').waitFor();
      if (!(await transcript(owner)).includes("wrote todo.txt")) throw new Error("the write did not happen");
      const ended = owner.locator(".toast").filter({ hasText: "the agent's turn ended" });
      await ended.first().waitFor();
    });

    await step("History shows the same transcript as the live view", async () => {
      await tab(owner, "Session");
      const want = await transcript(owner);
      await tab(owner, "History");
      await waitFor("the replayed transcript", async () => (await owner.locator(".history .transcript").innerText()) === want).catch(async (e) => {
        throw new Error(`${e.message}\nlive:\n${want}\nreplay:\n${await owner.locator(".history .transcript").innerText()}`);
      });
      const prompts = await owner.locator('.history [data-mark="prompt"]').count();
      const turns = await owner.locator('.history [data-mark="turn"]').count();
      if (prompts !== 5 || turns !== 5) throw new Error(`timeline markers: ${prompts} prompts, ${turns} turn ends`);
      await owner.locator('.history [data-mark="shell"]').waitFor();
      // The replayed screen fits its pane.
      await waitFor("the replayed screen to fit", async () => {
        const [screenBox, paneBox] = [await owner.locator(".history .screen").boundingBox(), await owner.locator(".history .screen-wrap").boundingBox()];
        return !!screenBox && !!paneBox && screenBox.width <= paneBox.width + 1 && screenBox.height <= paneBox.height + 1;
      });
      await shot("owner", "07-history");
    });

    await step("an ended session offers Resume; the turns go on", async () => {
      await tab(owner, "Session");
      const prompt = owner.getByLabel("Prompt", { exact: true });
      await prompt.fill("crash");
      await prompt.press("Enter");
      await owner.locator('.turn-end[data-turn="6"][data-stop-reason="error"]').waitFor();
      const resume = owner.getByRole("button", { name: "Resume" });
      await resume.click();
      await resume.waitFor({ state: "detached" });
      await waitFor("the prompt box to be free", async () => !(await prompt.isDisabled()));
      await prompt.fill("say resumed");
      await prompt.press("Enter");
      await owner.locator('.turn-end[data-turn="7"][data-stop-reason="end_turn"]').waitFor();
      await shot("owner", "09-resumed");
    });

    await step("an exited shell's tab can be closed; at 800 px the participants fold away and many tabs stay on one line", async () => {
      await tab(owner, /Shell 1/);
      await owner.locator(".shell .xterm").click();
      await owner.keyboard.type("exit\n");
      await owner.getByRole("tab", { name: "Shell 1 (exited)" }).waitFor();
      await owner.locator(".shell").getByText("exited: nobody can type here").waitFor();
      await owner.getByRole("button", { name: "Close the tab of shell 1" }).click();
      await owner.getByRole("tab", { name: /Shell 1/ }).waitFor({ state: "detached" });
      await bea.setViewportSize({ width: 800, height: 700 });
      await bea.locator("aside.people").waitFor({ state: "hidden" });
      await bea.getByRole("button", { name: /^People/ }).click();
      await bea.locator("aside.people").waitFor({ state: "visible" });
      await shot("bea", "08-narrow-people");
      await bea.getByRole("button", { name: /^People/ }).click();
      await shot("bea", "08-narrow");
      // Many shells at 800 px: one line of tabs, and a menu of them all.
      await owner.setViewportSize({ width: 800, height: 700 });
      for (let i = 0; i < 9; i++) {
        const before = await owner.locator(".shell-tab").count();
        await owner.getByRole("button", { name: "+ Shell" }).click();
        await waitFor("another shell tab", async () => (await owner.locator(".shell-tab").count()) === before + 1);
      }
      const bar = await owner.locator(".tabs").boundingBox();
      if (!bar || bar.height > 48) throw new Error(`the tab bar wrapped: ${JSON.stringify(bar)}`);
      const menu = owner.getByLabel("All tabs");
      await menu.selectOption("session");
      await owner.locator(".session .bar").waitFor();
      await shot("owner", "10-many-tabs");
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
