// The feed plan keeps the terminal's unparsed backlog bounded by skipping to
// a snapshot, one at a time, and the screen still ends as if every byte had
// been parsed: no byte lost, repeated or out of order.
import { describe, expect, it } from "vitest";
import type { BytesEvent } from "./events";
import { FeedPlan, type FeedCommand, type Snapshot, type WriteCommand } from "./shellFeed";
import { BinaryKind } from "./protocol.gen";

const enc = new TextEncoder();
const dec = new TextDecoder();

const ev = (seq: number, text: string): BytesEvent => ({
  kind: "bytes",
  seq,
  ts: seq,
  name: "shellData",
  binaryKind: BinaryKind.ShellData,
  id: 1,
  bytes: enc.encode(text),
});

/** A stand-in for xterm (a queue parsed in order, the screen as the text
 * since the last reset) and for the host's snapshot (the stream's text up
 * to its head). */
class Sim {
  queue: WriteCommand[] = [];
  screen = "";
  requests = 0;
  log: BytesEvent[] = [];
  constructor(readonly plan: FeedPlan) {}

  run(cmds: FeedCommand[]): void {
    for (const c of cmds) {
      if (c.op === "requestSnapshot") this.requests++;
      else this.queue.push(c);
    }
  }
  emit(e: BytesEvent): void {
    this.log.push(e);
    this.run(this.plan.bytes(e, e.ts));
  }
  /** The event arrives `late` ms after the host logged it. */
  emitLate(e: BytesEvent, late: number): void {
    this.log.push(e);
    this.run(this.plan.bytes(e, e.ts + late));
  }
  /** A resume delivering an event again (the host logged it once). */
  resend(e: BytesEvent): void {
    this.run(this.plan.bytes(e, e.ts));
  }
  /** xterm parses `n` queued writes. */
  parse(n = Infinity): void {
    for (; n > 0 && this.queue.length; n--) {
      const c = this.queue.shift() as WriteCommand;
      this.screen = c.op === "write" ? this.screen + dec.decode(c.bytes) : dec.decode(c.snapshot.data);
      this.plan.done(c);
    }
  }
  /** The host's snapshot as of the newest seq it has logged. */
  snapshotNow(): Snapshot {
    const seq = this.log.at(-1)?.seq ?? 0;
    return { seq, cols: 80, rows: 24, data: enc.encode(this.log.map((e) => dec.decode(e.bytes)).join("")) };
  }
  full(): string {
    return this.log.map((e) => dec.decode(e.bytes)).join("");
  }
}

function started(bound: number): Sim {
  const sim = new Sim(new FeedPlan(bound));
  sim.run(sim.plan.start());
  sim.run(sim.plan.snapshot(sim.snapshotNow()));
  sim.parse();
  return sim;
}

describe("shell feed", () => {
  it("starts from the snapshot and writes only what follows it, once each", () => {
    const plan = new FeedPlan(100);
    const sim = new Sim(plan);
    sim.run(plan.start());
    expect(sim.requests).toBe(1);
    sim.emit(ev(1, "a"));
    sim.emit(ev(2, "b"));
    // The snapshot covers seq 1; seq 2 was held and follows it.
    sim.run(plan.snapshot({ seq: 1, cols: 80, rows: 24, data: enc.encode("a") }));
    sim.resend(ev(2, "b"));
    sim.emit(ev(3, "c"));
    sim.parse();
    expect(sim.screen).toBe("abc");
    expect(plan.lastSeq).toBe(3);
    expect(plan.backlog).toBe(0);
    expect(plan.skips).toBe(0);
  });

  it("feeds everything while the terminal keeps up", () => {
    const sim = started(10);
    for (let s = 1; s <= 100; s++) {
      sim.emit(ev(s, `${s};`));
      sim.parse();
    }
    expect(sim.requests).toBe(1);
    expect(sim.screen).toBe(sim.full());
  });

  it("skips a backlog past the bound with one snapshot at a time", () => {
    const sim = started(10);
    const plan = sim.plan;
    for (let s = 1; s <= 4; s++) sim.emit(ev(s, "xxxx")); // 16 bytes queued, none parsed
    expect(sim.requests).toBe(2);
    expect(plan.snapshotInFlight).toBe(true);
    expect(sim.queue.length).toBe(3); // seq 4 found the backlog at 12 > 10 and was held
    for (let s = 5; s <= 9; s++) sim.emit(ev(s, "yy"));
    expect(sim.requests).toBe(2);
    expect(sim.queue.length).toBe(3);
    const snap = { ...sim.snapshotNow(), seq: 7 };
    snap.data = enc.encode(sim.log.filter((e) => e.seq <= 7).map((e) => dec.decode(e.bytes)).join(""));
    sim.run(plan.snapshot(snap));
    // The reset, then seqs 8 and 9 only.
    expect(sim.queue.slice(3).map((c) => c.op)).toEqual(["reset", "write", "write"]);
    expect(plan.skips).toBe(1);
    sim.parse();
    expect(sim.screen).toBe(sim.full());
    expect(plan.backlog).toBe(0);
  });

  it("does not skip again until the terminal has parsed the last reset", () => {
    const sim = started(10);
    const plan = sim.plan;
    for (let s = 1; s <= 4; s++) sim.emit(ev(s, "xxxxxx"));
    expect(sim.requests).toBe(2);
    sim.run(plan.snapshot(sim.snapshotNow()));
    // The backlog is still past the bound (old writes + the reset), but
    // nothing new is asked for before the reset is parsed.
    for (let s = 5; s <= 8; s++) sim.emit(ev(s, "zzzzzz"));
    expect(sim.requests).toBe(2);
    expect(plan.backlog).toBeGreaterThan(10);
    sim.parse(sim.queue.findIndex((c) => c.op === "reset") + 1);
    sim.emit(ev(9, "w"));
    expect(sim.requests).toBe(3);
    sim.run(plan.snapshot(sim.snapshotNow()));
    sim.parse();
    expect(sim.screen).toBe(sim.full());
  });

  it("falls back to feeding when the snapshot fails, and retries only after draining what was held", () => {
    const sim = started(10);
    const plan = sim.plan;
    for (let s = 1; s <= 5; s++) sim.emit(ev(s, "xxxxxx"));
    expect(sim.requests).toBe(2);
    sim.run(plan.snapshotFailed());
    expect(plan.snapshotInFlight).toBe(false);
    sim.emit(ev(6, "yyyyyy"));
    expect(sim.requests).toBe(2);
    sim.parse(sim.queue.length - 1); // all but seq 6: the held ones are parsed
    sim.emit(ev(7, "zzzzzzzzzzzz"));
    sim.emit(ev(8, "v"));
    expect(sim.requests).toBe(3);
    sim.run(plan.snapshotFailed());
    sim.parse();
    expect(sim.screen).toBe(sim.full());
  });

  it("skips when the stream arrives late, whatever the clocks' offset", () => {
    const sim = started(1000);
    const plan = sim.plan;
    // The page's clock is 5 s ahead of the host's: on time, not late.
    for (let s = 1; s <= 5; s++) {
      sim.emitLate(ev(s, "a"), 5000 + (s % 2) * 100);
      sim.parse();
    }
    expect(sim.requests).toBe(1);
    // Queued 300 ms beyond that, with nothing unparsed: skip.
    sim.emitLate(ev(6, "b"), 5300);
    expect(sim.requests).toBe(2);
    expect(plan.backlog).toBe(0);
    sim.emitLate(ev(7, "c"), 5400);
    expect(sim.requests).toBe(2);
    sim.run(plan.snapshot(sim.snapshotNow()));
    sim.parse();
    expect(sim.screen).toBe(sim.full());
  });

  it("keeps the stream when a snapshot is older than what it wrote", () => {
    const sim = started(10);
    const plan = sim.plan;
    for (let s = 1; s <= 3; s++) sim.emit(ev(s, "xxxxxx"));
    sim.emit(ev(4, "y"));
    expect(sim.requests).toBe(2);
    sim.run(plan.snapshot({ seq: 1, cols: 80, rows: 24, data: enc.encode("xxxxxx") }));
    expect(sim.queue.every((c) => c.op === "write")).toBe(true);
    sim.parse();
    expect(sim.screen).toBe(sim.full());
  });

  it("ends on the full stream's screen under any interleaving", () => {
    // A deterministic pseudo-random schedule of output, parsing and
    // snapshot answers (including failures).
    let x = 42;
    const rnd = () => ((x = (x * 1103515245 + 12345) % 2 ** 31), x / 2 ** 31);
    for (let round = 0; round < 50; round++) {
      const sim = started(64);
      let answered = sim.requests;
      let seq = 0;
      for (let step = 0; step < 400; step++) {
        const r = rnd();
        if (r < 0.6) {
          seq++;
          sim.emit(ev(seq, `${seq}:${"#".repeat(Math.floor(rnd() * 20))}|`));
          // A resume may deliver an old seq again.
          if (rnd() < 0.05 && seq > 1) sim.resend(sim.log[Math.floor(rnd() * (seq - 1))] as BytesEvent);
        } else if (r < 0.8) {
          sim.parse(1);
        } else if (sim.plan.snapshotInFlight && sim.requests > answered) {
          answered = sim.requests;
          sim.run(rnd() < 0.2 ? sim.plan.snapshotFailed() : sim.plan.snapshot(sim.snapshotNow()));
        }
        expect(sim.requests - answered).toBeLessThanOrEqual(1);
      }
      if (sim.plan.snapshotInFlight) sim.run(sim.plan.snapshot(sim.snapshotNow()));
      sim.parse();
      expect(sim.screen).toBe(sim.full());
      expect(sim.plan.backlog).toBe(0);
    }
  });
});
