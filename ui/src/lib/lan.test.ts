import { describe, expect, it } from "vitest";
import {
  joinLink,
  joinStage,
  nearbyAddress,
  peerWithNames,
  parseJoinTarget,
  relayRefusal,
  shortFingerprint,
  targetFromUrl,
  targetSearch,
  targetWsUrl,
  unencrypted,
  type Join,
} from "./lan";
import { applyEvent, applyWelcome, initialState } from "./reducer";
import type { Welcome } from "./protocol.gen";

const FP = "d372889966538ca7f85ac777723402a5201e7e759f88f53f0b30069d949a79ea";

describe("join targets", () => {
  it("reads addresses with and without a port", () => {
    expect(parseJoinTarget(" 192.168.1.20 ")).toEqual({ address: "192.168.1.20" });
    expect(parseJoinTarget("10.77.0.1:7000")).toEqual({ address: "10.77.0.1:7000" });
    expect(parseJoinTarget("[fe80::1]:6421")).toEqual({ address: "[fe80::1]:6421" });
    expect(parseJoinTarget("::1")).toEqual({ address: "[::1]" });
  });

  it("reads join links: address, pinned fingerprint and join code", () => {
    expect(parseJoinTarget(`ensemble://10.77.0.1:7000/#fp=${FP}&code=XYZ%2B1`)).toEqual({
      address: "10.77.0.1:7000",
      fingerprint: FP,
      joinCode: "XYZ+1",
    });
    expect(parseJoinTarget(`ensemble://10.77.0.1/#fp=${FP.toUpperCase()}`)).toEqual({ address: "10.77.0.1", fingerprint: FP });
    expect(parseJoinTarget("ensemble://10.77.0.1")).toEqual({ address: "10.77.0.1" });
    // A link made by joinLink reads back.
    expect(parseJoinTarget(joinLink("127.0.0.1:46271", FP, "a b"))).toEqual({ address: "127.0.0.1:46271", fingerprint: FP, joinCode: "a b" });
    // With the VM the code was made in (a code opens only that VM).
    expect(parseJoinTarget(joinLink("127.0.0.1:46271", FP, "C", ["team", "a&b"]))).toEqual({
      address: "127.0.0.1:46271",
      fingerprint: FP,
      joinCode: "C",
      key: ["team", "a&b"],
    });
  });

  it("refuses names, bad ports and bad fingerprints with a reason", () => {
    expect(() => parseJoinTarget("alice.local")).toThrow(/not an address/);
    expect(() => parseJoinTarget("10.0.0.5:99999")).toThrow(/not an address/);
    expect(() => parseJoinTarget("300.1.1.1")).toThrow(/not an address/);
    expect(() => parseJoinTarget("")).toThrow(/Enter an IP address/);
    expect(() => parseJoinTarget("ensemble://10.0.0.5/#fp=abc")).toThrow(/fingerprint/);
  });
});

describe("display helpers", () => {
  it("shortens a fingerprint as the host prints it", () => {
    expect(shortFingerprint(FP)).toBe("d372-8899-6653-8ca7");
  });

  it("joins a nearby host at its first address, IPv6 in brackets", () => {
    expect(nearbyAddress({ addresses: ["127.0.0.1", "::1"], port: 46271 })).toBe("127.0.0.1:46271");
    expect(nearbyAddress({ addresses: ["fe80::1"], port: 6421 })).toBe("[fe80::1]:6421");
    expect(nearbyAddress({ addresses: [], port: 6421 })).toBeNull();
  });
});

describe("paired hosts", () => {
  it("are named as they announce themselves when nearby", () => {
    const peer = { peerId: "hd372", displayName: "Owner", hostName: "127.0.0.1", address: "127.0.0.1:1", fingerprint: FP, role: "collaborator", pairedMs: 0 };
    const near = { instance: "i", displayName: "Alice", hostName: "alice-laptop", addresses: [], port: 1, fingerprint: FP, protocol: 1, peerId: "hd372" };
    expect(peerWithNames({ peers: [peer], nearby: [] }, "hd372")?.displayName).toBe("Owner");
    expect(peerWithNames({ peers: [peer], nearby: [near] }, "hd372")).toMatchObject({ displayName: "Alice", hostName: "alice-laptop" });
    expect(peerWithNames({ peers: [peer], nearby: [{ ...near, fingerprint: "00" }] }, "hd372")?.displayName).toBe("Owner");
    expect(peerWithNames({ peers: [], nearby: [] }, "hd372")).toBeUndefined();
  });
});

describe("join stages", () => {
  const j = (over: Partial<Join>): Join => ({ joinId: 1, address: "10.0.0.5:6421", state: "connecting", ...over });
  it("shows the code while verifying and waiting, then the outcome", () => {
    expect(joinStage(j({}))).toEqual({ kind: "connecting" });
    expect(joinStage(j({ state: "verifying", code: "123 456" }))).toEqual({ kind: "verify", code: "123 456", waiting: false });
    expect(joinStage(j({ state: "waiting", code: "123 456" }))).toEqual({ kind: "verify", code: "123 456", waiting: true });
    expect(joinStage(j({ state: "approved", peerId: "habc" }))).toEqual({ kind: "approved", peerId: "habc" });
    expect(joinStage(j({ state: "denied", error: "join_denied" }))).toEqual({ kind: "denied", error: "join_denied" });
    expect(joinStage(j({ state: "failed", error: "connection refused" }))).toEqual({ kind: "failed", error: "connection refused" });
    // No code yet: still connecting, never an empty code.
    expect(joinStage(j({ state: "verifying" }))).toEqual({ kind: "connecting" });
  });
});

describe("targets and URLs", () => {
  it("reads and writes ?peer=&key=", () => {
    expect(targetFromUrl({ search: "" })).toEqual({ peer: null, key: ["default"] });
    expect(targetFromUrl({ search: "?peer=h0123456789ab&key=team&key=agent" })).toEqual({ peer: "h0123456789ab", key: ["team", "agent"] });
    expect(targetFromUrl({ search: "?peer=../x" }).peer).toBeNull();
    expect(targetSearch({ peer: null, key: ["default"] })).toBe("");
    expect(targetSearch({ peer: "habc", key: ["default"] })).toBe("?peer=habc");
    expect(targetSearch({ peer: "habc", key: ["a", "b"] })).toBe("?peer=habc&key=a&key=b");
    const t = { peer: "habc", key: ["x y"] };
    expect(targetFromUrl({ search: targetSearch(t) })).toEqual(t);
  });

  it("opens a peer's VM through this host's relay", () => {
    expect(targetWsUrl({ protocol: "http:", host: "127.0.0.1:6420" }, null)).toBe("ws://127.0.0.1:6420/v1/ws");
    expect(targetWsUrl({ protocol: "http:", host: "127.0.0.1:6420" }, "habc")).toBe("ws://127.0.0.1:6420/v1/peers/habc/ws");
    expect(targetWsUrl({ protocol: "https:", host: "h:1" }, "habc")).toBe("wss://h:1/v1/peers/habc/ws");
  });

  it("warns on plain HTTP from another machine only", () => {
    expect(unencrypted({ protocol: "http:", hostname: "127.0.0.1" })).toBe(false);
    expect(unencrypted({ protocol: "http:", hostname: "localhost" })).toBe(false);
    expect(unencrypted({ protocol: "http:", hostname: "[::1]" })).toBe(false);
    expect(unencrypted({ protocol: "http:", hostname: "192.168.1.20" })).toBe(true);
    expect(unencrypted({ protocol: "http:", hostname: "alice-laptop.local" })).toBe(true);
    expect(unencrypted({ protocol: "https:", hostname: "192.168.1.20" })).toBe(false);
  });

  it("explains the relay's refusals", () => {
    expect(relayRefusal("peer_unavailable", "connection refused", "Alice's host")).toMatch(/cannot be reached/);
    expect(relayRefusal("fingerprint_mismatch", "x", "Alice's host")).toMatch(/different certificate/);
    expect(relayRefusal("invalid_args", "x", "Alice's host")).toBeNull();
  });
});

describe("join requests from another host", () => {
  const welcome: Welcome = {
    type: "welcome",
    protocol: 1,
    server: "ensemble/test",
    vm: { id: 1, key: ["default"] },
    head: 1,
    first: 1,
    outputFrom: 1,
    limits: { maxMessageBytes: 1, maxPageLimit: 1 },
    isolation: "bwrap",
    you: { id: "p1", name: "Alice", color: "#000000", role: "owner", connected: true, lastSeen: 0 },
    participants: [],
    control: null,
    controlRequests: [],
    joinRequests: [{ requestId: "j1", name: "Bea", since: 0, code: "123 456", fingerprint: FP }],
  };

  it("keep their code and fingerprint; plain ones have none", () => {
    let s = applyWelcome(initialState(), welcome);
    expect(s.joinRequests.j1).toEqual({ requestId: "j1", name: "Bea", code: "123 456", fingerprint: FP });
    s = applyEvent(s, { kind: "json", seq: 2, ts: 0, name: "joinRequested", data: { requestId: "j2", name: "Cy", code: null, fingerprint: null } });
    expect(s.joinRequests.j2).toEqual({ requestId: "j2", name: "Cy" });
  });
});
