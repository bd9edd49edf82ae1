// Feeds one shell's byte stream into its xterm with a bounded backlog.
//
// xterm.js parses more slowly than a flooding shell produces, and whatever
// it has not parsed waits in its write queue: a command typed at the end of
// a flood echoes only once everything before it is parsed. So the feed
// counts the bytes handed to `term.write` whose callback has not fired and
// how late the bytes arrive; past `BACKLOG_BOUND` or `LAG_BOUND_MS` it stops
// feeding, asks the host for `getShellSnapshot`
// (the screen as of a seq: the host's terminal model saw every byte), resets
// the terminal to it and carries on with the bytes after its seq. The screen
// ends up as if every byte had been parsed; only the rendering of what
// nobody could read is skipped. The log keeps everything.
//
// `FeedPlan` is the decision part, without I/O: it takes the stream, the
// write callbacks and the snapshot answers, and says what to write and when
// to ask. `feedShell` carries its commands out on a terminal and a
// connection.
import type { Terminal } from "@xterm/xterm";
import type { VmConnection } from "./connection.svelte";
import { base64ToBytes, type BytesEvent } from "./events";
import { errorText } from "./util";

/** Bytes the terminal may have queued unparsed before the feed skips to a
 * snapshot: a few hundred ms of xterm.js parsing on a slow machine. */
export const BACKLOG_BOUND = 2 * 2 ** 20; // 2 MiB

/** How far behind the host's log the stream may arrive before the feed
 * skips: the page's own message queue backs up too when the main thread is
 * busy parsing and drawing, and that queue is not in `term.write`'s count. */
export const LAG_BOUND_MS = 250;

/** Full reset (RIS): the snapshot is drawn on a fresh terminal, so whatever
 * was still queued before it is wiped once parsed. */
const RESET = new Uint8Array([0x1b, 0x63]);

export interface Snapshot {
  seq: number;
  cols: number;
  rows: number;
  data: Uint8Array;
}

/** What to write, in order; `done(cmd)` goes back to the plan when xterm has
 * parsed it. A reset resizes to the snapshot's size, then writes RIS and the
 * snapshot's data. */
export type WriteCommand =
  | { op: "write"; id: number; size: number; bytes: Uint8Array }
  | { op: "reset"; id: number; size: number; snapshot: Snapshot };

export type FeedCommand = WriteCommand | { op: "requestSnapshot" };

export class FeedPlan {
  /** The seq the terminal's screen is at (once its writes are parsed). */
  lastSeq = 0;
  /** Bytes handed to the terminal whose write callback has not fired. */
  backlog = 0;
  /** Snapshots taken after the first, to skip a backlog (for tests and the page). */
  skips = 0;
  /** Events that arrived while a snapshot is in flight (null: none is). */
  #held: BytesEvent[] | null = null;
  #nextId = 1;
  #parsedId = 0;
  /** No new skip until xterm has parsed this write: each skip needs real
   * progress after the last one, so skips cannot chase each other. */
  #rearmAt = 0;
  #started = false;

  /** The least (arrival - log time) seen: the clock offset plus the
   * network's delay; anything above it is time spent queued. */
  #offset = Infinity;

  constructor(
    readonly bound: number = BACKLOG_BOUND,
    readonly lagBound: number = LAG_BOUND_MS,
  ) {}

  /** A fresh terminal starts from a snapshot (listen first, then ask). */
  start(): FeedCommand[] {
    if (this.#started) return [];
    this.#started = true;
    this.#held = [];
    return [{ op: "requestSnapshot" }];
  }

  get snapshotInFlight(): boolean {
    return this.#held !== null;
  }

  /** A shellData event of this shell, in stream order, arriving at `now`
   * (ms, the clock of the host's `ts`). */
  bytes(ev: BytesEvent, now: number): FeedCommand[] {
    const late = now - ev.ts;
    this.#offset = Math.min(this.#offset, late);
    if (this.#held) {
      this.#held.push(ev);
      return [];
    }
    if (ev.seq <= this.lastSeq) return [];
    const behind = this.backlog > this.bound || late - this.#offset > this.lagBound;
    if (behind && this.#parsedId >= this.#rearmAt) {
      this.#held = [ev];
      this.skips++;
      return [{ op: "requestSnapshot" }];
    }
    return [this.#write(ev)];
  }

  /** xterm has parsed `cmd` (its write callback fired). */
  done(cmd: WriteCommand): void {
    this.backlog -= cmd.size;
    this.#parsedId = Math.max(this.#parsedId, cmd.id);
  }

  /** The host's answer to the request: reset to it, then only what follows. */
  snapshot(snap: Snapshot): FeedCommand[] {
    const held = this.#held;
    if (!held) return [];
    // A snapshot older than what is already written would need bytes that
    // were not held: keep the stream instead.
    if (snap.seq < this.lastSeq) return this.snapshotFailed();
    this.#held = null;
    const id = this.#nextId++;
    const size = RESET.length + snap.data.length;
    this.backlog += size;
    this.lastSeq = snap.seq;
    this.#rearmAt = id;
    const out: FeedCommand[] = [{ op: "reset", id, size, snapshot: snap }];
    for (const ev of held) if (ev.seq > this.lastSeq) out.push(this.#write(ev));
    return out;
  }

  /** No snapshot: write what was held and go on feeding everything. */
  snapshotFailed(): FeedCommand[] {
    const held = this.#held;
    if (!held) return [];
    this.#held = null;
    const out: WriteCommand[] = [];
    for (const ev of held) if (ev.seq > this.lastSeq) out.push(this.#write(ev));
    this.#rearmAt = this.#nextId - 1;
    return out;
  }

  #write(ev: BytesEvent): WriteCommand {
    this.lastSeq = ev.seq;
    this.backlog += ev.bytes.length;
    return { op: "write", id: this.#nextId++, size: ev.bytes.length, bytes: ev.bytes };
  }
}

/** Feeds `shellId`'s stream into `term` from a snapshot on; `onError` hears
 * when the first snapshot fails (the screen then lacks what came before).
 * Returns the unsubscribe. */
export function feedShell(term: Terminal, conn: VmConnection, shellId: number, onError: (msg: string) => void): () => void {
  const plan = new FeedPlan();
  let closed = false;
  let first = true;
  const run = (cmds: FeedCommand[]) => {
    if (closed) return;
    for (const cmd of cmds) {
      if (cmd.op === "requestSnapshot") {
        const initial = first;
        first = false;
        conn
          .call("getShellSnapshot", shellId)
          .then((v) => {
            const s = v as { seq: number; cols: number; rows: number; data: string };
            return { seq: s.seq, cols: s.cols, rows: s.rows, data: base64ToBytes(s.data) };
          })
          .then(
            (snap) => run(plan.snapshot(snap)),
            (e) => {
              if (initial) onError(`No snapshot: ${errorText(e)}`);
              run(plan.snapshotFailed());
            },
          );
      } else if (cmd.op === "write") {
        term.write(cmd.bytes, () => plan.done(cmd));
      } else {
        // Sized now: the bytes still queued before it are wiped by its RIS.
        term.resize(cmd.snapshot.cols, cmd.snapshot.rows);
        term.write(RESET);
        term.write(cmd.snapshot.data, () => plan.done(cmd));
      }
    }
    term.element?.setAttribute("data-skips", String(plan.skips));
  };
  const unsubscribe = conn.onShellData(shellId, (ev) => run(plan.bytes(ev, Date.now())));
  run(plan.start());
  return () => {
    closed = true;
    unsubscribe();
  };
}
