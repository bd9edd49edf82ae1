// One WebSocket to one VM: hello, subscribe, actions, and the event stream
// folded by the reducer. Reconnects on its own and resumes with
// `subscribe {since: lastSeq}`; the reducer drops anything at or below
// lastSeq, so a resume neither loses nor repeats an event.
//
// A fresh page does not replay shell output: it subscribes from welcome's
// head, reads the history of every other event with getEvents (live events
// wait in a buffer meanwhile, so they are folded in seq order), and each
// terminal starts from a getShellSnapshot.
//
// A paired host's VM is opened the same way through this host's relay
// (`/v1/peers/{peerId}/ws`, see lib/lan.ts): the frames are the peer's. A
// dropped link closes the socket (1011) and the connection resumes like any
// other; a refusal by the relay (peer unreachable, changed certificate, not
// the owner) ends it with a message instead of retrying blindly.
import { forgetToken, helloFields, storeToken, type Credential } from "./auth";
import { decodeBinaryFrame, fromEventFrame, type BytesEvent, type LogEvent } from "./events";
import { EVENTS, PROTOCOL_VERSION, WS_PATH, type ErrorBody, type EventFrame, type Hello, type ServerMessage, type Welcome } from "./protocol.gen";
import { applyCaughtUp, applyEvent, applyWelcome, initialState, type State } from "./reducer";

export type Status = "connecting" | "catchingUp" | "live" | "offline" | "pending" | "denied" | "refused";

/** Errors with which the relay refuses to open a peer's VM (then it closes
 * the socket with 1008). */
export const RELAY_REFUSALS = ["peer_unavailable", "fingerprint_mismatch", "forbidden", "not_found"];

export interface ConnectionOptions {
  /** Subscribe to the event stream (default true); false for a connection
   * used only to call actions (the owner's LAN actions). */
  subscribe?: boolean;
  /** Through this host's relay to a paired host: the relay's refusals end
   * the connection (status "refused"). */
  relay?: boolean;
}

export class ActionError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
  }
}

/** Every event name but shell output, for the history a fresh page reads. */
const HISTORY_NAMES = EVENTS.filter((n) => n !== "shellData");
const HISTORY_PAGE = 2000;
const MAX_BACKOFF_MS = 5000;

type ShellListener = (ev: BytesEvent) => void;

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

export class VmConnection {
  state: State = $state.raw(initialState());
  status: Status = $state("connecting");
  lastError: string | null = $state(null);
  /** Why the host refused this page (`unauthorized`, `join_denied`), once
   * `status` is "denied"; or why the relay refused (`peer_unavailable`,
   * `fingerprint_mismatch`, …) once it is "refused". */
  deniedCode: string | null = $state(null);
  /** `none`: the host runs this VM's processes without a sandbox
   * (`ensemble serve --isolation none`); the page warns everyone. */
  isolation: string = $state("bwrap");
  /** The host's message with `deniedCode`. */
  deniedMessage: string | null = $state(null);
  /** Events folded in, and events dropped because they were already in. */
  applied = $state(0);
  duplicates = $state(0);

  #ws: WebSocket | null = null;
  #ready = false;
  #closed = false;
  #attempt = 0;
  #nextId = 1;
  #pending = new Map<number, Pending>();
  #buffer: LogEvent[] | null = null;
  #shellListeners = new Map<number, Set<ShellListener>>();
  #eventListeners = new Set<(ev: LogEvent) => void>();
  // The reducer's latest state; published to `state` once per frame so a
  // burst of events renders once.
  #current: State = initialState();
  #publishScheduled = false;
  #welcomed = false;
  #timer: ReturnType<typeof setTimeout> | null = null;
  readonly #subscribe: boolean;
  readonly relay: boolean;

  constructor(
    readonly key: string[],
    private credential: Credential,
    private readonly name: string,
    readonly url: string,
    private readonly storage: Storage | null,
    options: ConnectionOptions = {},
  ) {
    this.#subscribe = options.subscribe ?? true;
    this.relay = options.relay ?? false;
    this.#connect();
  }

  /** The token this connection proves itself with, if it has one (given,
   * or issued in welcome). */
  get token(): string | undefined {
    return this.credential.token;
  }

  /** Connects again after a refusal (the person asked to). */
  retry(): void {
    if (this.#closed || (this.status !== "refused" && this.status !== "offline")) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.deniedCode = null;
    this.deniedMessage = null;
    this.#attempt = 0;
    this.#connect();
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#ws?.close();
  }

  /** Calls an action; rejects with ActionError on an error answer. */
  call(name: string, ...args: unknown[]): Promise<unknown> {
    const ws = this.#ws;
    if (!ws || !this.#ready || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ActionError("offline", "Not connected to the host"));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ type: "action", id, name, args }));
    });
  }

  /** Shell output as it arrives (each seq once); returns the unsubscribe. */
  onShellData(shellId: number, f: ShellListener): () => void {
    let set = this.#shellListeners.get(shellId);
    if (!set) this.#shellListeners.set(shellId, (set = new Set()));
    set.add(f);
    return () => set.delete(f);
  }

  /** Every folded event, in seq order (the history view appends them). */
  onEvent(f: (ev: LogEvent) => void): () => void {
    this.#eventListeners.add(f);
    return () => this.#eventListeners.delete(f);
  }

  #connect(): void {
    this.status = "connecting";
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    ws.onopen = () => {
      const hello: Hello = { type: "hello", protocol: PROTOCOL_VERSION, key: this.key, ...helloFields(this.credential) };
      if (this.name) hello.name = this.name;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (m: MessageEvent<string | ArrayBuffer>) => {
      if (typeof m.data === "string") this.#onText(m.data);
      else {
        const ev = decodeBinaryFrame(m.data);
        if (ev) this.#deliver(ev);
      }
    };
    ws.onclose = () => this.#onClose(ws);
  }

  #onClose(ws: WebSocket): void {
    if (this.#ws !== ws) return;
    this.#ready = false;
    this.#buffer = null;
    for (const p of this.#pending.values()) p.reject(new ActionError("offline", "The connection closed"));
    this.#pending.clear();
    if (this.#closed || this.status === "denied" || this.status === "refused") return;
    this.status = "offline";
    const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.#attempt++);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#connect();
    }, delay);
  }

  #onText(text: string): void {
    let msg: ServerMessage;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    switch (msg.type) {
      case "welcome":
        this.#onWelcome(msg);
        break;
      case "caughtUp":
        if (this.#buffer) this.#buffer.push({ kind: "json", seq: msg.seq, ts: 0, name: "", data: CAUGHT_UP });
        else this.#caughtUp(msg.seq);
        break;
      case "result":
        this.#settle(msg.id, (p) => p.resolve(msg.value));
        break;
      case "error":
        this.#onError(msg.id, msg.error);
        break;
      case "event":
        this.#deliver(fromEventFrame(msg));
        break;
      case "joinPending":
        this.status = "pending";
        break;
    }
  }

  #onWelcome(w: Welcome): void {
    this.#ready = true;
    this.isolation = w.isolation ?? "bwrap";
    this.#welcomed = true;
    this.#attempt = 0;
    this.lastError = null;
    if (w.token) {
      this.credential = { token: w.token };
      storeToken(this.storage, w.token);
    }
    this.#set(applyWelcome(this.#current, w));
    if (!this.#subscribe) {
      this.status = "live";
      return;
    }
    const since = this.#current.lastSeq;
    this.status = "catchingUp";
    if (since > 0 || w.head === 0) {
      this.#send({ type: "subscribe", since });
      return;
    }
    this.#buffer = [];
    this.#send({ type: "subscribe", since: w.head });
    void this.#loadHistory(w.head);
  }

  async #loadHistory(head: number): Promise<void> {
    const ws = this.#ws;
    try {
      let since = 0;
      while (since < head) {
        const page = (await this.call("getEvents", { since, limit: HISTORY_PAGE, names: HISTORY_NAMES })) as {
          events: EventFrame[];
          more: boolean;
          next: number;
        };
        for (const f of page.events) if (f.seq <= head) this.#dispatch(fromEventFrame(f));
        if (!page.more) break;
        since = page.next;
      }
    } catch {
      return; // The connection dropped: the resume picks up from lastSeq.
    }
    if (this.#ws !== ws || !this.#buffer) return;
    this.#caughtUp(head);
    const buffered = this.#buffer;
    this.#buffer = null;
    for (const ev of buffered) {
      if (ev.kind === "json" && ev.data === CAUGHT_UP) this.#caughtUp(ev.seq);
      else this.#dispatch(ev);
    }
  }

  #caughtUp(seq: number): void {
    this.#set(applyCaughtUp(this.#current, seq));
    this.status = "live";
  }

  #onError(id: number | undefined, error: ErrorBody): void {
    if (id !== undefined && this.#pending.has(id)) {
      this.#settle(id, (p) => p.reject(new ActionError(error.code, error.message, error.data)));
      return;
    }
    this.lastError = `${error.code}: ${error.message}`;
    if (this.relay && RELAY_REFUSALS.includes(error.code)) {
      // A peer that went away while this page was on it may come back: keep
      // resuming (the message says why it waits). Anything else, and a
      // first connection, stops here with the reason.
      if (error.code === "peer_unavailable" && this.#welcomed) return;
      this.deniedCode = error.code;
      this.deniedMessage = error.message;
      this.status = "refused";
      this.#ws?.close();
      return;
    }
    if (error.code === "unauthorized" || error.code === "join_denied") {
      if (error.code === "unauthorized" && this.credential.token) forgetToken(this.storage);
      this.deniedCode = error.code;
      this.deniedMessage = error.message;
      this.status = "denied";
      this.#ws?.close();
    }
  }

  #settle(id: number, f: (p: Pending) => void): void {
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    f(p);
  }

  #send(msg: unknown): void {
    this.#ws?.send(JSON.stringify(msg));
  }

  #deliver(ev: LogEvent): void {
    if (this.#buffer) this.#buffer.push(ev);
    else this.#dispatch(ev);
  }

  #dispatch(ev: LogEvent): void {
    if (ev.seq <= this.#current.lastSeq) {
      this.duplicates++;
      return;
    }
    this.#set(applyEvent(this.#current, ev));
    this.applied++;
    if (ev.kind === "bytes" && ev.name === "shellData") {
      for (const f of this.#shellListeners.get(ev.id) ?? []) f(ev);
    }
    for (const f of this.#eventListeners) f(ev);
  }

  #set(s: State): void {
    this.#current = s;
    if (this.#publishScheduled) return;
    this.#publishScheduled = true;
    const publish = () => {
      this.#publishScheduled = false;
      this.state = this.#current;
    };
    // Hidden pages get no animation frames; they still keep their state.
    if (document.hidden) setTimeout(publish, 100);
    else requestAnimationFrame(publish);
  }

  /** The state as folded so far, ahead of what has been rendered. */
  get current(): State {
    return this.#current;
  }
}

/** Marks a caughtUp that arrived while history was loading. */
const CAUGHT_UP = Symbol("caughtUp");

/** The host's WebSocket URL for the page it served. */
export function wsUrl(loc: Location): string {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}${WS_PATH}`;
}
