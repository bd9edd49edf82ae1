// This host's LAN state for the owner's page: `getLan` polled over a
// connection to this host (about every second while the Nearby panel is
// open or a join is under way, every few seconds otherwise), and the LAN
// actions. Owner only: the host answers `forbidden` to anyone else.
import { errorText } from "./util";
import type { VmConnection } from "./connection.svelte";
import { peerWithNames, type JoinTarget, type LanStatus, type Peer } from "./lan";

const FAST_MS = 1000;
const SLOW_MS = 5000;

export class LanStore {
  status: LanStatus | null = $state.raw(null);
  /** The last failed call, in words. */
  error: string | null = $state(null);
  busy = $state(false);
  /** The join started from this page, and whose host it asks (for the
   * words), so the Nearby panel shows its progress whenever it is open. */
  joinId: number | null = $state(null);
  joinWho: string | null = $state(null);

  #browsers = 0;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #running = false;
  #inflight = false;

  /** `conn` gives the current connection to this host (it may change). */
  constructor(private readonly conn: () => VmConnection | null) {}

  start(): void {
    if (this.#running) return;
    this.#running = true;
    void this.refresh();
  }

  stop(): void {
    this.#running = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** While a Nearby panel is open, the host browses and the list is polled
   * every second. Returns the function that ends it. */
  browse(): () => void {
    this.#browsers++;
    void this.refresh();
    let done = false;
    return () => {
      if (!done) this.#browsers--;
      done = true;
    };
  }

  get browsing(): boolean {
    return this.#browsers > 0;
  }

  /** A paired host, with the names it announces if it is nearby. */
  peer(peerId: string | null): Peer | undefined {
    return peerId && this.status ? peerWithNames(this.status, peerId) : undefined;
  }

  /** Every paired host, named as `peer` names them. */
  get peers(): Peer[] {
    const st = this.status;
    return st ? st.peers.map((p) => peerWithNames(st, p.peerId) ?? p) : [];
  }

  async refresh(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const conn = this.conn();
    if (!this.#inflight && conn && conn.status === "live") {
      this.#inflight = true;
      try {
        this.status = (await conn.call("getLan", { browse: this.browsing })) as LanStatus;
      } catch (e) {
        this.error = errorText(e);
      } finally {
        this.#inflight = false;
      }
    }
    if (!this.#running) return;
    if (this.#timer) clearTimeout(this.#timer);
    const joining = this.status?.joins.some((j) => j.state === "connecting" || j.state === "verifying" || j.state === "waiting");
    this.#timer = setTimeout(() => void this.refresh(), this.browsing || joining || !this.status ? FAST_MS : SLOW_MS);
  }

  async #act<T>(name: string, ...args: unknown[]): Promise<T | null> {
    const conn = this.conn();
    if (!conn) return null;
    this.error = null;
    this.busy = true;
    try {
      return (await conn.call(name, ...args)) as T;
    } catch (e) {
      this.error = errorText(e);
      return null;
    } finally {
      this.busy = false;
    }
  }

  async setSharing(on: boolean): Promise<void> {
    const status = await this.#act<LanStatus>("setLanSharing", on);
    if (status) this.status = status;
  }

  /** Asks the host at `target` to let this install in; its progress is in
   * `status.joins` under `joinId`. `who` names its owner, if known. */
  async join(target: JoinTarget, extra: { key?: string[]; hostName?: string; who?: string }): Promise<number | null> {
    this.joinId = null;
    this.joinWho = extra.who ?? null;
    const args: Record<string, unknown> = { address: target.address };
    if (target.fingerprint) args.fingerprint = target.fingerprint;
    if (target.joinCode) args.joinCode = target.joinCode;
    if (extra.key) args.key = extra.key.length === 1 ? extra.key[0] : extra.key;
    if (extra.hostName) args.hostName = extra.hostName;
    if (this.status?.displayName) args.name = this.status.displayName;
    const r = await this.#act<{ joinId: number }>("joinPeer", args);
    this.joinId = r?.joinId ?? null;
    void this.refresh();
    return this.joinId;
  }

  async forget(peerId: string): Promise<void> {
    await this.#act("forgetPeer", peerId);
    await this.refresh();
  }
}
