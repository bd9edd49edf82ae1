// The reducer folds the same log to the same state however it arrives: live
// (binary frames and text event frames, one at a time), replayed from
// getEvents pages (binary events in their base64 JSON view), or across a
// resume that delivers some events twice.
import { describe, expect, it } from "vitest";
import { decodeBinaryFrame, fromEventFrame, toEventFrame, type LogEvent } from "./events";
import { BINARY_HEADER, BINARY_HEADER_LEN, BinaryKind, type EventFrame, type Holder, type Participant, type Welcome } from "./protocol.gen";
import { applyCaughtUp, applyEvent, applyEvents, applyWelcome, initialState, type State } from "./reducer";

const enc = new TextEncoder();

function binaryFrame(kind: BinaryKind, seq: number, id: number, payload: string): ArrayBuffer {
  const body = enc.encode(payload);
  const buf = new ArrayBuffer(BINARY_HEADER_LEN + body.length);
  const v = new DataView(buf);
  v.setUint8(BINARY_HEADER.kind.offset, kind);
  v.setBigUint64(BINARY_HEADER.seq.offset, BigInt(seq));
  v.setBigUint64(BINARY_HEADER.ts.offset, BigInt(1_700_000_000_000 + seq));
  v.setUint32(BINARY_HEADER.id.offset, id);
  new Uint8Array(buf, BINARY_HEADER_LEN).set(body);
  return buf;
}

const update = (sessionId: string, u: object) => ({
  sessionId,
  sequenceNumber: 0,
  event: { jsonrpc: "2.0", method: "session/update", params: { sessionId, update: u } },
});

const alice: Participant = { id: "p1", name: "alice", color: "#e06c75", role: "owner", connected: true, lastSeen: 0 };
const bob: Participant = { id: "p2", name: "bob", color: "#61afef", role: "collaborator", connected: true, lastSeen: 0 };

type Live = { json: [string, unknown] } | { bin: [BinaryKind, number, string] };

/** One scripted turn of activity, in log order (seq = index + 1). */
const LOG: Live[] = [
  { json: ["participantJoined", { participant: bob }] },
  { json: ["shellOpened", { shellId: 1, pid: 100, command: "/bin/bash", args: [], cwd: ".", cols: 80, rows: 24, running: true }] },
  { bin: [BinaryKind.ShellData, 1, "$ echo hi\r\nhi\r\n"] },
  { json: ["controlRequested", { participantId: "p2", holder: { kind: "person", participantId: "p1" }, answeredBy: "p1" }] },
  { json: ["controlChanged", { holder: { kind: "person", participantId: "p2" }, previous: null, by: "p1", reason: "granted" }] },
  { json: ["shellResized", { shellId: 1, cols: 120, rows: 40 }] },
  { json: ["sessionCreated", { sessionId: "s1", agentType: "scripted", agentInfo: { name: "scripted", version: "0.1.0" } }] },
  { json: ["prompt", { sessionId: "s1", turn: 1, participantId: "p2", name: "bob", color: "#61afef", text: "list the files\nplease", shellContext: false, handed: false }] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "agent_thought_chunk", content: { type: "text", text: "let me " } })] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "agent_thought_chunk", content: { type: "text", text: "look" } })] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "plan", entries: [{ content: "look", priority: "medium", status: "in_progress" }] })] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "tool_call", toolCallId: "call-1", title: "run ls", kind: "execute" })] },
  { json: ["processStarted", { pid: 200, command: "sh", args: ["-c", "ls"], cwd: ".", sessionId: "s1", terminalId: "term-1" }] },
  { bin: [BinaryKind.ProcessStdout, 200, "a.txt\n"] },
  { bin: [BinaryKind.ProcessStderr, 200, "ls: warning\n"] },
  { bin: [BinaryKind.ProcessStdout, 200, "b.txt\n"] },
  { json: ["processExit", { pid: 200, exitCode: 0, signal: null }] },
  { json: ["permissionRequest", { sessionId: "s1", permissionId: "perm-1", toolCall: { toolCallId: "call-2" }, options: [{ optionId: "allow", name: "Allow", kind: "allow_once" }] }] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "tool_call_update", toolCallId: "call-1", status: "completed", content: [{ type: "content", content: { type: "text", text: "a.txt\nb.txt\n" } }] })] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "plan", entries: [{ content: "look", priority: "medium", status: "completed" }] })] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "agent_message_chunk", content: { type: "text", text: "all " } })] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "agent_message_chunk", content: { type: "text", text: "done" } })] },
  { json: ["turnEnded", { sessionId: "s1", turn: 1, stopReason: "end_turn", error: null }] },
  { json: ["prompt", { sessionId: "s1", turn: 2, participantId: "p2", name: "bob", color: "#61afef", text: "now fix it", shellContext: true, handed: true }] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "agent_message_chunk", content: { type: "text", text: "fixing" } })] },
  { json: ["sessionEvent", update("s1", { sessionUpdate: "plan", entries: [{ content: "fix", priority: "medium", status: "pending" }] })] },
  { json: ["joinRequested", { requestId: "r1", name: "carol" }] },
  { bin: [BinaryKind.ShellData, 1, "$ "] },
  { json: ["shellExit", { shellId: 1, exitCode: 0, signal: null }] },
];
const HEAD = LOG.length;

/** The event as it arrives live: a binary frame or a text event frame. */
function live(i: number): LogEvent {
  const seq = i + 1;
  const e = LOG[i]!;
  if ("bin" in e) {
    const ev = decodeBinaryFrame(binaryFrame(e.bin[0], seq, e.bin[1], e.bin[2]));
    if (!ev) throw new Error("frame did not decode");
    return ev;
  }
  return fromEventFrame(JSON.parse(JSON.stringify({ type: "event", seq, ts: 1_700_000_000_000 + seq, name: e.json[0], data: e.json[1] })));
}

/** The event as a getEvents page lists it (binary events as base64 JSON). */
function fromPage(i: number): LogEvent {
  const frame = JSON.parse(JSON.stringify(toEventFrame(live(i)))) as EventFrame;
  return fromEventFrame(frame);
}

function welcome(head: number, extra: Partial<Welcome> = {}): Welcome {
  return {
    you: alice,
    participants: [alice],
    control: null,
    controlRequests: [],
    type: "welcome",
    protocol: 1,
    server: "ensemble/test",
    vm: { id: 1, key: ["default"] },
    head,
    first: 1,
    outputFrom: 1,
    limits: { maxMessageBytes: 1 << 20, maxPageLimit: 10000 },
    isolation: "bwrap",
    ...extra,
  };
}

function foldLive(): State {
  let s = applyWelcome(initialState(), welcome(0, { you: alice, participants: [alice], control: null }));
  s = applyCaughtUp(s, 0);
  for (let i = 0; i < HEAD; i++) s = applyEvent(s, live(i));
  return s;
}

describe("reducer", () => {
  it("folds a turn into shells, processes, sessions and control", () => {
    const s = foldLive();
    expect(s.lastSeq).toBe(HEAD);
    expect(s.shells[1]).toMatchObject({ cols: 120, rows: 40, running: false, exit: { exitCode: 0, signal: null } });
    expect(s.processes[200]!.output).toEqual([
      { stream: "stdout", text: "a.txt\n" },
      { stream: "stderr", text: "ls: warning\n" },
      { stream: "stdout", text: "b.txt\n" },
    ]);
    expect(s.processes[200]!.exit).toEqual({ exitCode: 0, signal: null });
    const session = s.sessions.s1!;
    expect(session.items.map((i) => i.type)).toEqual(["prompt", "thought", "plan", "tool", "message", "turnEnd", "prompt", "message", "plan"]);
    expect(session.items[0]).toMatchObject({ turn: 1, participantId: "p2", name: "bob", color: "#61afef", text: "list the files\nplease", handed: false });
    expect(session.items[1]).toMatchObject({ text: "let me look" });
    expect(session.items[2]).toMatchObject({ entries: [{ status: "completed" }] });
    expect(session.items[4]).toMatchObject({ role: "agent", text: "all done" });
    expect(session.items[5]).toMatchObject({ type: "turnEnd", turn: 1, stopReason: "end_turn", error: null });
    expect(session.items[6]).toMatchObject({ turn: 2, shellContext: true, handed: true });
    // The next turn's message does not run into the last one, and its plan
    // is its own.
    expect(session.items[7]).toMatchObject({ role: "agent", text: "fixing" });
    expect(session.items[8]).toMatchObject({ entries: [{ content: "fix" }] });
    expect(session.turn).toBe(2);
    expect(session.title).toBe("list the files");
    expect(session.toolCalls["call-1"]).toMatchObject({ status: "completed", title: "run ls" });
    expect(Object.keys(session.permissions)).toEqual(["perm-1"]);
    expect(s.control).toEqual({ kind: "person", participantId: "p2" });
    expect(s.controlRequests).toEqual([]);
    expect(Object.keys(s.participants)).toEqual(["p1", "p2"]);
    expect(Object.keys(s.joinRequests)).toEqual(["r1"]);
  });

  it("gives the same state for a replay of log pages as for the live stream", () => {
    const liveState = foldLive();
    // A page loaded later: welcome carries the participant snapshot as of
    // its head, and the pages are the JSON view of the same log.
    let replay = applyWelcome(
      initialState(),
      welcome(HEAD, { you: alice, participants: Object.values(liveState.participants), control: liveState.control }),
    );
    for (let start = 0; start < HEAD; start += 5) {
      const page = [];
      for (let i = start; i < Math.min(HEAD, start + 5); i++) page.push(fromPage(i));
      replay = applyEvents(replay, page);
    }
    replay = applyCaughtUp(replay, HEAD);
    expect({ ...replay, authSeq: 0 }).toEqual({ ...liveState, authSeq: 0 });
  });

  it("drops what a resume delivers again", () => {
    const liveState = foldLive();
    let s = applyWelcome(initialState(), welcome(0, { you: alice, participants: [alice], control: null }));
    // Connected until seq 14, reconnect: the host resends from an older
    // cursor (a client that resumed with a stale since), then the rest.
    for (let i = 0; i < 15; i++) s = applyEvent(s, live(i));
    s = applyWelcome(s, welcome(15, { participants: Object.values(s.participants), control: s.control }));
    for (let i = 9; i < HEAD; i++) s = applyEvent(s, live(i));
    expect({ ...s, authSeq: 0 }).toEqual({ ...liveState, authSeq: 0 });
    const before = s;
    expect(applyEvent(s, live(3))).toBe(before);
  });

  it("closes a turn the session's end cut off, and a resume opens it again", () => {
    let s = foldLive();
    const at = (seq: number, name: string, data: unknown) =>
      fromEventFrame(JSON.parse(JSON.stringify({ type: "event", seq, ts: 1_700_000_000_000 + seq, name, data })));
    s = applyEvent(s, at(HEAD + 1, "sessionEnded", { sessionId: "s1", reason: "agent exited", exitCode: 3 }));
    let ss = s.sessions.s1!;
    expect(ss.ended).toEqual({ reason: "agent exited", exitCode: 3 });
    expect(ss.turn).toBeNull();
    expect(ss.items[ss.items.length - 1]).toMatchObject({ type: "turnEnd", turn: 2, stopReason: null, error: "the session ended (agent exited)" });
    s = applyEvent(s, at(HEAD + 2, "sessionResumed", { sessionId: "s1", agentType: "scripted", agentSessionId: "x" }));
    s = applyEvent(s, at(HEAD + 3, "prompt", { sessionId: "s1", turn: 3, participantId: "p1", name: "alice", color: "#e06c75", text: "again", shellContext: false, handed: false }));
    ss = s.sessions.s1!;
    expect(ss.ended).toBeNull();
    expect(ss.turn).toBe(3);
    expect(ss.title).toBe("list the files");
  });

  it("starts afresh for another VM", () => {
    const s = applyWelcome(foldLive(), { ...welcome(0), vm: { id: 2, key: ["other"] } });
    expect(s.lastSeq).toBe(0);
    expect(s.sessions).toEqual({});
  });

  it("skips malformed binary frames", () => {
    expect(decodeBinaryFrame(new ArrayBuffer(3))).toBeNull();
    const bad = binaryFrame(BinaryKind.ShellData, 1, 1, "x");
    new DataView(bad).setUint8(0, 9);
    expect(decodeBinaryFrame(bad)).toBeNull();
  });
});

const person = (participantId: string): Holder => ({ kind: "person", participantId });
const carol: Participant = { id: "p3", name: "carol", color: "#98c379", role: "collaborator", connected: true, lastSeen: 0 };
const dave: Participant = { id: "p4", name: "dave", color: "#c678dd", role: "collaborator", connected: true, lastSeen: 0 };
const erin: Participant = { id: "p5", name: "erin", color: "#d19a66", role: "collaborator", connected: true, lastSeen: 0 };
const changed = (holder: Holder | null, previous: Holder | null, by: string | null, reason: string) => ["controlChanged", { holder, previous, by, reason }] as const;
const agent: Holder = { kind: "agent", sessionId: "s1", supervisor: "p2" };

/** Access events as the host logs them (docs/protocol.md, Events), in log
 * order; seq = index + 1. */
const ACCESS: (readonly [string, unknown])[] = [
  ["participantJoined", { participant: bob }],
  ["participantJoined", { participant: carol }],
  ["participantJoined", { participant: dave }],
  ["participantJoined", { participant: erin }],
  changed(person("p1"), null, "p1", "taken"),
  ["controlRequested", { participantId: "p2", holder: person("p1"), answeredBy: "p1" }],
  ["controlRequested", { participantId: "p3", holder: person("p1"), answeredBy: "p1" }],
  changed(person("p2"), person("p1"), "p1", "granted"),
  ["controlDenied", { participantId: "p3", by: "p2" }],
  ["controlRequested", { participantId: "p4", holder: person("p2"), answeredBy: "p2" }],
  ["controlRequested", { participantId: "p5", holder: person("p2"), answeredBy: "p2" }],
  ["participantLeft", { participantId: "p4", lastSeen: 5, reason: "removed" }],
  ["participantUpdated", { participant: { ...carol, role: "viewer" } }],
  changed(agent, person("p2"), "p2", "handedToAgent"),
  ["joinRequested", { requestId: "j1", name: "frank" }],
  changed(person("p2"), agent, "p2", "takenFromAgent"),
  ["joinResolved", { requestId: "j1", approved: false, participantId: null, reason: "denied" }],
  ["joinRequested", { requestId: "j2", name: "gina" }],
  ["participantLeft", { participantId: "p2", lastSeen: 9 }],
  changed(null, person("p2"), null, "disconnected"),
];

const accessFrame = (i: number): LogEvent =>
  fromEventFrame(JSON.parse(JSON.stringify({ type: "event", seq: i + 1, ts: 1_700_000_000_000 + i, name: ACCESS[i]![0], data: ACCESS[i]![1] })));

/** Live from an empty VM; `upTo` events folded. */
function accessLive(upTo = ACCESS.length): State {
  let s = applyCaughtUp(applyWelcome(initialState(), welcome(0)), 0);
  for (let i = 0; i < upTo; i++) s = applyEvent(s, accessFrame(i));
  return s;
}

const comparable = (s: State) => ({ ...s, authSeq: 0, joinSeq: 0, head: 0 });

/** What the owner's welcome carries for a host in state `then`. */
const snapshotOf = (then: State): Partial<Welcome> => ({
  participants: Object.values(then.participants),
  control: then.control,
  controlRequests: then.controlRequests,
  joinRequests: Object.values(then.joinRequests).map((r) => ({ ...r, since: 0 })),
});

describe("access events", () => {
  it("fold as the host changes its state", () => {
    const s = accessLive();
    expect(s.control).toBeNull();
    // dave was removed; bob left; carol was made a viewer.
    expect(Object.keys(s.participants)).toEqual(["p1", "p2", "p3", "p5"]);
    expect(s.participants.p2).toMatchObject({ connected: false, lastSeen: 9 });
    expect(s.participants.p3!.role).toBe("viewer");
    // bob's request was answered by the grant, carol's by the denial,
    // dave's by his removal; erin's outlives two changes of holder.
    expect(s.controlRequests).toEqual(["p5"]);
    expect(Object.keys(s.joinRequests)).toEqual(["j2"]);
    expect(accessLive(14).control).toEqual(agent);
    expect(accessLive(16).control).toEqual(person("p2"));
  });

  it("give the same state live and replayed after a welcome at any point", () => {
    const liveState = accessLive();
    for (let head = 0; head <= ACCESS.length; head++) {
      // The welcome a page gets at `head`: the participants and holder then.
      const then = accessLive(head);
      let replay = applyWelcome(initialState(), welcome(head, snapshotOf(then)));
      for (let i = 0; i < ACCESS.length; i++) replay = applyEvent(replay, accessFrame(i));
      replay = applyCaughtUp(replay, ACCESS.length);
      expect(comparable(replay), `welcome at ${head}`).toEqual(comparable(liveState));
    }
  });

  it("trust the welcome over old requests in the log (a host restart forgets them)", () => {
    const before = accessLive();
    expect(before.controlRequests).not.toEqual([]);
    // A restarted host: nobody is waiting, whatever the history says.
    let s = applyWelcome(initialState(), welcome(ACCESS.length, { ...snapshotOf(before), controlRequests: [], joinRequests: [] }));
    for (let i = 0; i < ACCESS.length; i++) s = applyEvent(s, accessFrame(i));
    expect(s.controlRequests).toEqual([]);
    expect(s.joinRequests).toEqual({});
  });

  it("a resume across changes ends where the live stream does", () => {
    const liveState = accessLive();
    let s = accessLive(7);
    const mid = accessLive(12);
    s = applyWelcome(s, welcome(12, snapshotOf(mid)));
    for (let i = 5; i < ACCESS.length; i++) s = applyEvent(s, accessFrame(i));
    expect(comparable(s)).toEqual(comparable(liveState));
  });
});
