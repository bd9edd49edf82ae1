// Sharing on the LAN as the UI sees it: the shapes `getLan` answers (host
// structs, not in protocol.gen.ts; see docs/protocol.md, "LAN"), and the pure
// parts of the Nearby panel and of opening a paired host's VM: join links,
// addresses, the stage a join is at, the page URL of a host and VM, and the
// relay's WebSocket URL.

/** The LAN port a host listens on by default (`--lan-bind`). */
export const DEFAULT_LAN_PORT = 6421;

/** A host announced nearby (mDNS), with this install's pairing if any. */
export interface NearbyHost {
  instance: string;
  displayName: string;
  hostName: string;
  /** IP addresses, IPv4 first. */
  addresses: string[];
  port: number;
  /** Announced: a hint only, the TLS handshake checks it. */
  fingerprint: string;
  protocol: number;
  peerId: string | null;
}

/** A paired host (its token is never shown). */
export interface Peer {
  peerId: string;
  displayName: string;
  hostName: string;
  address: string;
  fingerprint: string;
  role: string;
  pairedMs: number;
}

export type JoinState = "connecting" | "verifying" | "waiting" | "approved" | "denied" | "failed";

/** A join this host made to another. */
export interface Join {
  joinId: number;
  address: string;
  state: JoinState;
  code?: string;
  fingerprint?: string;
  peerId?: string;
  error?: string;
}

/** What `getLan` and `setLanSharing` answer. */
export interface LanStatus {
  sharing: boolean;
  /** Where teammates reach this host while sharing (TLS). */
  addresses: string[];
  /** The plain-HTTP address for browsers, when the owner allowed it. */
  insecureHttp?: string | null;
  fingerprint: string;
  displayName: string;
  hostName: string;
  browsing: boolean;
  nearby: NearbyHost[];
  peers: Peer[];
  joins: Join[];
  error?: string | null;
}

/** The first 16 hex digits in groups of four (`3f2a-91c0-…`), as the host
 * prints it: for people to glance at, never to decide anything. */
export function shortFingerprint(hex: string): string {
  return (hex.slice(0, 16).match(/.{1,4}/g) ?? []).join("-");
}

/** `ip:port`, with brackets around an IPv6 address. */
export function socketAddr(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** The address to join a nearby host at: its first address (IPv4 first). */
export function nearbyAddress(h: Pick<NearbyHost, "addresses" | "port">): string | null {
  const ip = h.addresses[0];
  return ip === undefined ? null : socketAddr(ip, h.port);
}

export interface JoinTarget {
  /** `ip[:port]` as `joinPeer` takes it. */
  address: string;
  fingerprint?: string;
  joinCode?: string;
  /** The VM a link's join code was made in (a code opens only that VM). */
  key?: string[];
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function isIp(text: string): boolean {
  const v4 = IPV4.exec(text);
  if (v4) return v4.slice(1).every((n) => Number(n) <= 255);
  return /^[0-9a-fA-F:.]+(%[\w.-]+)?$/.test(text) && text.includes(":");
}

/**
 * Reads what a person typed in "Enter an address": an IP address with an
 * optional port (`192.168.1.20`, `192.168.1.20:7000`, `[fe80::1]:6421`) or a
 * join link `ensemble://ADDR/#fp=FINGERPRINT&code=JOINCODE` (the fingerprint
 * pins the host's certificate; with the code no approval is needed). Throws
 * an Error that says what is wrong.
 */
export function parseJoinTarget(input: string): JoinTarget {
  const text = input.trim();
  let rest = text;
  let fragment = "";
  if (/^ensemble:\/\//i.test(text)) {
    rest = text.slice("ensemble://".length);
    const hash = rest.indexOf("#");
    if (hash >= 0) {
      fragment = rest.slice(hash + 1);
      rest = rest.slice(0, hash);
    }
    rest = rest.replace(/\/+$/, "");
  }
  const target: JoinTarget = { address: checkAddress(rest) };
  for (const pair of fragment.split("&")) {
    const eq = pair.indexOf("=");
    if (eq < 0) continue;
    const [k, v] = [pair.slice(0, eq), decodeURIComponent(pair.slice(eq + 1))];
    if (k === "fp" && v) {
      if (!/^[0-9a-fA-F]{64}$/.test(v)) throw new Error("The link's fingerprint (fp=) is not 64 hex digits");
      target.fingerprint = v.toLowerCase();
    } else if (k === "code" && v) {
      target.joinCode = v;
    } else if (k === "key" && v) {
      target.key = parseLinkKey(v);
    }
  }
  return target;
}

function checkAddress(text: string): string {
  const bad = () =>
    new Error(`"${text}" is not an address: give an IP address with an optional port, such as 192.168.1.20:${DEFAULT_LAN_PORT}, or a join link`);
  if (!text) throw new Error("Enter an IP address (such as 192.168.1.20) or a join link");
  let ip = text;
  let port: string | null = null;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  const parts = text.split(":");
  if (bracketed) {
    ip = bracketed[1] ?? "";
    port = bracketed[2] ?? null;
  } else if (parts.length === 2) {
    ip = parts[0] ?? "";
    port = parts[1] ?? "";
  }
  if (!isIp(ip)) throw bad();
  if (port !== null) {
    const n = Number(port);
    if (!/^\d+$/.test(port) || n < 1 || n > 65535) throw bad();
  }
  const host = ip.includes(":") ? `[${ip}]` : ip;
  return port === null ? host : `${host}:${port}`;
}

/** A paired host with the names to show: the ones it announces now, when
 * it is nearby (its owner's chosen name), else the ones stored at pairing. */
export function peerWithNames(status: Pick<LanStatus, "peers" | "nearby">, peerId: string): Peer | undefined {
  const peer = status.peers.find((p) => p.peerId === peerId);
  if (!peer) return undefined;
  const seen = status.nearby.find((n) => n.fingerprint === peer.fingerprint);
  return seen ? { ...peer, displayName: seen.displayName || peer.displayName, hostName: seen.hostName || peer.hostName } : peer;
}

/** A link's `key=`: a JSON array of names, or one name. */
function parseLinkKey(v: string): string[] {
  try {
    const parsed: unknown = JSON.parse(v);
    if (Array.isArray(parsed) && parsed.length > 0 && parsed.every((p) => typeof p === "string")) return parsed as string[];
  } catch {
    // Not JSON: one name.
  }
  return [v];
}

/** A join link for a host at `address` with `fingerprint` (and a join code,
 * with the VM it was made in: a code opens only that VM). */
export function joinLink(address: string, fingerprint: string, joinCode?: string, key?: string[]): string {
  const code = joinCode ? `&code=${encodeURIComponent(joinCode)}` : "";
  const vm = joinCode && key ? `&key=${encodeURIComponent(JSON.stringify(key))}` : "";
  return `ensemble://${address}/#fp=${fingerprint}${code}${vm}`;
}

/** Where a join is, in the words the panel uses. */
export type JoinStage =
  | { kind: "connecting" }
  | { kind: "verify"; code: string; waiting: boolean }
  | { kind: "approved"; peerId: string }
  | { kind: "denied"; error: string }
  | { kind: "failed"; error: string };

export function joinStage(j: Join): JoinStage {
  switch (j.state) {
    case "connecting":
      return { kind: "connecting" };
    case "verifying":
    case "waiting":
      return j.code ? { kind: "verify", code: j.code, waiting: j.state === "waiting" } : { kind: "connecting" };
    case "approved":
      return j.peerId ? { kind: "approved", peerId: j.peerId } : { kind: "failed", error: "approved, but no pairing was stored" };
    case "denied":
      return { kind: "denied", error: j.error ?? "the owner turned the request down" };
    default:
      return { kind: "failed", error: j.error ?? `unknown state ${String(j.state)}` };
  }
}

/** Which host and VM the page shows: this host's, or a paired peer's. */
export interface Target {
  /** A paired host's peer id; null for this host. */
  peer: string | null;
  key: string[];
}

/** The target from the page URL: `?peer=h…&key=a&key=b`. */
export function targetFromUrl(loc: Pick<Location, "search">): Target {
  const params = new URLSearchParams(loc.search);
  const keys = params.getAll("key").filter((k) => k.length > 0);
  const peer = params.get("peer");
  return { peer: peer && /^[\w-]{1,64}$/.test(peer) ? peer : null, key: keys.length > 0 ? keys : ["default"] };
}

/** The page's query for a target (shareable: no credential in it). */
export function targetSearch(t: Target): string {
  const params = new URLSearchParams();
  if (t.peer) params.set("peer", t.peer);
  if (!(t.key.length === 1 && t.key[0] === "default")) for (const k of t.key) params.append("key", k);
  const s = params.toString();
  return s ? `?${s}` : "";
}

/** The WebSocket the page opens a target through: this host's `/v1/ws`, or
 * its relay to the peer (`/v1/peers/{peerId}/ws`). */
export function targetWsUrl(loc: Pick<Location, "protocol" | "host">, peer: string | null): string {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  const path = peer ? `/v1/peers/${encodeURIComponent(peer)}/ws` : "/v1/ws";
  return `${scheme}//${loc.host}${path}`;
}

/** Is the page served over plain HTTP from another machine (the host's
 * `--lan-insecure-http`)? Then tokens and events cross the network
 * unencrypted. */
export function unencrypted(loc: Pick<Location, "protocol" | "hostname">): boolean {
  if (loc.protocol !== "http:") return false;
  const h = loc.hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return !(h === "localhost" || h.endsWith(".localhost") || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h));
}

/** Why the relay refused to open a peer's VM, in words (null: not a relay
 * refusal). */
export function relayRefusal(code: string, message: string, hostName: string): string | null {
  switch (code) {
    case "peer_unavailable":
      return `${hostName} cannot be reached right now (${message}). Is Ensemble running there, with sharing on, on this network?`;
    case "fingerprint_mismatch":
      return `${hostName} presented a different certificate than the one you paired with. This can mean someone is impersonating it, or that Ensemble was reinstalled there. Nothing was sent. If the owner confirms a reinstall, forget the host and join it again.`;
    case "forbidden":
      return `Only this computer's owner can open paired hosts (${message}).`;
    case "not_found":
      return `This computer is not paired with that host (${message}). Join it again from Nearby.`;
    default:
      return null;
  }
}
