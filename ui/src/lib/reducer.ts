// The event reducer: folds a VM's welcome and its log events, in seq order,
// into the state the UI shows. Pure (no I/O, no clock): the same events give
// the same state whether they arrived live, after a resume, or as a replay of
// log pages, and an event at or below the last applied seq changes nothing,
// which is what makes reconnects idempotent.
import type { LogEvent } from "./events";
import { BinaryKind, ROLES, type Holder, type Participant, type Role, type Welcome } from "./protocol.gen";

export interface Exit {
  exitCode: number | null;
  signal: number | null;
}

export interface ShellState {
  shellId: number;
  pid: number;
  command: string;
  cols: number;
  rows: number;
  running: boolean;
  exit: Exit | null;
  openedSeq: number;
}

export interface OutputChunk {
  stream: "stdout" | "stderr";
  text: string;
}

export interface ProcessState {
  pid: number;
  command: string;
  args: string[];
  sessionId: string | null;
  terminalId: string | null;
  output: OutputChunk[];
  /** Characters kept in `output`; older output is dropped past the cap. */
  outputChars: number;
  truncated: boolean;
  exit: Exit | null;
}

export interface PlanEntry {
  content: string;
  status: string;
  priority: string;
}

export interface ToolCall {
  toolCallId: string;
  title: string;
  kind: string;
  status: string;
  /** Text output, diffs and terminals the agent attached, in ACP shape. */
  content: unknown[];
}

export type TranscriptItem =
  | { type: "message"; role: "agent" | "user"; text: string; seq: number }
  | { type: "thought"; text: string; seq: number }
  | { type: "plan"; entries: PlanEntry[]; seq: number }
  | { type: "tool"; toolCallId: string; seq: number }
  | PromptItem
  | TurnEndItem;

/** A person's prompt: the start of a turn. */
export interface PromptItem {
  type: "prompt";
  seq: number;
  turn: number;
  participantId: string;
  name: string;
  color: string;
  text: string;
  /** `handToAgent` put the shell context before the text. */
  shellContext: boolean;
  /** Handed with `handToAgent` (the agent drove for the turn). */
  handed: boolean;
}

/** The boundary after a turn. */
export interface TurnEndItem {
  type: "turnEnd";
  seq: number;
  turn: number;
  stopReason: string | null;
  error: string | null;
}

export interface Permission {
  permissionId: string;
  /** The seq of its `permissionRequest`. */
  seq: number;
  toolCall: unknown;
  options: { optionId: string; name: string; kind: string }[];
}

export interface SessionState {
  sessionId: string;
  agentType: string;
  agentName: string;
  items: TranscriptItem[];
  toolCalls: Record<string, ToolCall>;
  permissions: Record<string, Permission>;
  ended: { reason: string; exitCode: number | null } | null;
  /** The turn running now (a prompt without its end), if any. */
  turn: number | null;
  /** What the first prompt said: with the agent's name, the session's name. */
  title: string | null;
  /** The agent supports `session/load`: an ended session can be resumed. */
  canResume: boolean;
}

export interface State {
  vmId: number | null;
  key: string[];
  /** Highest seq folded in: the `since` of the next subscribe. */
  lastSeq: number;
  head: number;
  outputFrom: number;
  shells: Record<number, ShellState>;
  processes: Record<number, ProcessState>;
  sessions: Record<string, SessionState>;
  you: Participant | null;
  participants: Record<string, Participant>;
  control: Holder | null;
  /** Welcome's participant snapshot is as of this seq; older events of that
   * kind are already in it. */
  authSeq: number;
  /** Who asked for control and was not answered, oldest first. Like the
   * host, a request outlives a change of holder: whoever answers now (the
   * holder, or the agent's supervisor) may grant or deny it. */
  controlRequests: string[];
  joinRequests: Record<string, JoinRequestState>;
  /** The owner's welcome lists the join requests waiting as of this seq;
   * older join events are already in it (0: no such welcome yet). */
  joinSeq: number;
}

/** A join request waiting for the owner. `code` and `fingerprint` are set
 * when another host asks over TLS: the verification code both screens show,
 * and the asking install's certificate fingerprint. */
export interface JoinRequestState {
  requestId: string;
  name: string;
  code?: string;
  fingerprint?: string;
}

function joinRequest(requestId: string, name: string, code: unknown, fingerprint: unknown): JoinRequestState {
  const r: JoinRequestState = { requestId, name };
  if (typeof code === "string" && code) r.code = code;
  if (typeof fingerprint === "string" && fingerprint) r.fingerprint = fingerprint;
  return r;
}

/** Output kept per process for its log view. */
export const PROCESS_OUTPUT_CAP = 1 << 20; // 1 Mi characters

export function initialState(): State {
  return {
    vmId: null,
    key: [],
    lastSeq: 0,
    head: 0,
    outputFrom: 0,
    shells: {},
    processes: {},
    sessions: {},
    you: null,
    participants: {},
    control: null,
    authSeq: 0,
    controlRequests: [],
    joinRequests: {},
    joinSeq: 0,
  };
}

/** Folds a welcome. A different VM (another host or data dir) starts afresh. */
export function applyWelcome(prev: State, w: Welcome): State {
  const s = prev.vmId !== null && prev.vmId !== w.vm.id ? initialState() : prev;
  return {
    ...s,
    vmId: w.vm.id,
    key: w.vm.key,
    head: Math.max(s.head, w.head),
    outputFrom: w.outputFrom,
    you: w.you,
    participants: Object.fromEntries(w.participants.map((p) => [p.id, p])),
    control: w.control,
    controlRequests: w.controlRequests,
    authSeq: Math.max(s.authSeq, w.head),
    ...(w.joinRequests
      ? {
          joinRequests: Object.fromEntries(w.joinRequests.map((r) => [r.requestId, joinRequest(r.requestId, r.name, r.code, r.fingerprint)])),
          joinSeq: Math.max(s.joinSeq, w.head),
        }
      : {}),
  };
}

/** All events up to `seq` were delivered (some may have been filtered out). */
export function applyCaughtUp(s: State, seq: number): State {
  return seq > s.lastSeq ? { ...s, lastSeq: seq, head: Math.max(s.head, seq) } : s;
}

export function applyEvents(s: State, events: Iterable<LogEvent>): State {
  let out = s;
  for (const ev of events) out = applyEvent(out, ev);
  return out;
}

function obj(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}
const str = (v: unknown, d = ""): string => (typeof v === "string" ? v : d);
const num = (v: unknown, d = 0): number => (typeof v === "number" ? v : d);
const numOrNull = (v: unknown): number | null => (typeof v === "number" ? v : null);
const strOrNull = (v: unknown): string | null => (typeof v === "string" ? v : null);

function exitOf(d: Record<string, unknown>): Exit {
  return { exitCode: numOrNull(d.exitCode), signal: numOrNull(d.signal) };
}

const utf8 = new TextDecoder();

export function applyEvent(s: State, ev: LogEvent): State {
  if (ev.seq <= s.lastSeq) return s;
  const next: State = { ...s, lastSeq: ev.seq, head: Math.max(s.head, ev.seq) };
  if (ev.kind === "bytes") {
    // Shell bytes go to terminals, not to state: a screen is the terminal's.
    if (ev.binaryKind === BinaryKind.ProcessStdout || ev.binaryKind === BinaryKind.ProcessStderr) {
      const p = next.processes[ev.id];
      if (p) {
        const stream = ev.binaryKind === BinaryKind.ProcessStderr ? "stderr" : "stdout";
        next.processes = { ...next.processes, [ev.id]: appendOutput(p, stream, utf8.decode(ev.bytes)) };
      }
    }
    return next;
  }
  const d = obj(ev.data);
  switch (ev.name) {
    case "shellOpened": {
      const shellId = num(d.shellId);
      next.shells = {
        ...next.shells,
        [shellId]: {
          shellId,
          pid: num(d.pid),
          command: str(d.command, "shell"),
          cols: num(d.cols, 80),
          rows: num(d.rows, 24),
          running: true,
          exit: null,
          openedSeq: ev.seq,
        },
      };
      return next;
    }
    case "shellResized":
      return patchShell(next, num(d.shellId), { cols: num(d.cols, 80), rows: num(d.rows, 24) });
    case "shellExit":
      return patchShell(next, num(d.shellId), { running: false, exit: exitOf(d) });
    case "processStarted": {
      const pid = num(d.pid);
      next.processes = {
        ...next.processes,
        [pid]: {
          pid,
          command: str(d.command),
          args: Array.isArray(d.args) ? d.args.map((a) => str(a)) : [],
          sessionId: strOrNull(d.sessionId),
          terminalId: strOrNull(d.terminalId),
          output: [],
          outputChars: 0,
          truncated: false,
          exit: null,
        },
      };
      return next;
    }
    case "processExit": {
      const p = next.processes[num(d.pid)];
      if (p) next.processes = { ...next.processes, [p.pid]: { ...p, exit: exitOf(d) } };
      return next;
    }
    case "sessionCreated": {
      const sessionId = str(d.sessionId);
      const info = obj(d.agentInfo);
      next.sessions = {
        ...next.sessions,
        [sessionId]: {
          sessionId,
          agentType: str(d.agentType),
          agentName: str(info.name, str(d.agentType)),
          items: [],
          toolCalls: {},
          permissions: {},
          ended: null,
          turn: null,
          title: null,
          canResume: obj(d.capabilities).loadSession === true,
        },
      };
      return next;
    }
    case "sessionResumed":
      return patchSession(next, str(d.sessionId), (ss) => ({ ...ss, ended: null }));
    case "sessionEvent":
      return patchSession(next, str(d.sessionId), (ss) => applySessionUpdate(ss, obj(obj(obj(d.event).params).update), ev.seq));
    case "permissionRequest":
      return patchSession(next, str(d.sessionId), (ss) => {
        const permissionId = str(d.permissionId);
        const options = (Array.isArray(d.options) ? d.options : []).map((o) => {
          const r = obj(o);
          return { optionId: str(r.optionId), name: str(r.name, str(r.optionId)), kind: str(r.kind) };
        });
        const perm: Permission = { permissionId, seq: ev.seq, toolCall: d.toolCall, options };
        return { ...ss, permissions: { ...ss.permissions, [permissionId]: perm } };
      });
    case "prompt":
      return patchSession(next, str(d.sessionId), (ss) => {
        const item: PromptItem = {
          type: "prompt",
          seq: ev.seq,
          turn: num(d.turn),
          participantId: str(d.participantId),
          name: str(d.name, str(d.participantId, "someone")),
          color: str(d.color, "#888888"),
          text: str(d.text),
          shellContext: d.shellContext === true,
          handed: d.handed === true,
        };
        return { ...ss, items: [...ss.items, item], turn: item.turn, title: ss.title ?? firstLine(item.text) };
      });
    case "turnEnded":
      return patchSession(next, str(d.sessionId), (ss) => {
        const item: TurnEndItem = { type: "turnEnd", seq: ev.seq, turn: num(d.turn), stopReason: strOrNull(d.stopReason), error: strOrNull(d.error) };
        return { ...ss, items: [...ss.items, item], turn: null };
      });
    case "permissionTimeout":
      return patchSession(next, str(d.sessionId), (ss) => dropPermission(ss, str(d.permissionId)));
    case "sessionEnded":
      return patchSession(next, str(d.sessionId), (ss) => ({
        ...ss,
        // A turn the agent's exit cut off still gets its boundary.
        items:
          ss.turn === null
            ? ss.items
            : [...ss.items, { type: "turnEnd", seq: ev.seq, turn: ss.turn, stopReason: null, error: `the session ended (${str(d.reason, "ended")})` }],
        permissions: {},
        turn: null,
        ended: { reason: str(d.reason, "ended"), exitCode: numOrNull(d.exitCode) },
      }));
    default:
      return applyAccessEvent(next, ev.name, d, ev.seq);
  }
}

function patchShell(s: State, shellId: number, patch: Partial<ShellState>): State {
  const sh = s.shells[shellId];
  if (!sh) return s;
  return { ...s, shells: { ...s.shells, [shellId]: { ...sh, ...patch } } };
}

function patchSession(s: State, sessionId: string, f: (ss: SessionState) => SessionState): State {
  const ss = s.sessions[sessionId];
  if (!ss) return s;
  return { ...s, sessions: { ...s.sessions, [sessionId]: f(ss) } };
}

function dropPermission(ss: SessionState, permissionId: string): SessionState {
  if (!(permissionId in ss.permissions)) return ss;
  const permissions = { ...ss.permissions };
  delete permissions[permissionId];
  return { ...ss, permissions };
}

function appendOutput(p: ProcessState, stream: "stdout" | "stderr", text: string): ProcessState {
  let output = p.output.slice();
  const last = output[output.length - 1];
  if (last && last.stream === stream) output[output.length - 1] = { stream, text: last.text + text };
  else output.push({ stream, text });
  let outputChars = p.outputChars + text.length;
  let truncated = p.truncated;
  while (outputChars > PROCESS_OUTPUT_CAP && output.length > 0) {
    const first = output[0]!;
    const excess = outputChars - PROCESS_OUTPUT_CAP;
    truncated = true;
    if (first.text.length <= excess) {
      output = output.slice(1);
      outputChars -= first.text.length;
    } else {
      output[0] = { stream: first.stream, text: first.text.slice(excess) };
      outputChars -= excess;
    }
  }
  return { ...p, output, outputChars, truncated };
}

function firstLine(text: string): string {
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 60 ? line.slice(0, 59) + "…" : line;
}

function textOf(content: unknown): string {
  const c = obj(content);
  return c.type === "text" ? str(c.text) : "";
}

/** One ACP `session/update`. */
function applySessionUpdate(ss: SessionState, u: Record<string, unknown>, seq: number): SessionState {
  const kind = str(u.sessionUpdate);
  switch (kind) {
    case "agent_message_chunk":
    case "user_message_chunk": {
      const role = kind === "agent_message_chunk" ? "agent" : "user";
      const text = textOf(u.content);
      const last = ss.items[ss.items.length - 1];
      if (last && last.type === "message" && last.role === role) {
        return { ...ss, items: [...ss.items.slice(0, -1), { ...last, text: last.text + text }] };
      }
      return { ...ss, items: [...ss.items, { type: "message", role, text, seq }] };
    }
    case "agent_thought_chunk": {
      const text = textOf(u.content);
      const last = ss.items[ss.items.length - 1];
      if (last && last.type === "thought") {
        return { ...ss, items: [...ss.items.slice(0, -1), { ...last, text: last.text + text }] };
      }
      return { ...ss, items: [...ss.items, { type: "thought", text, seq }] };
    }
    case "plan": {
      const entries = (Array.isArray(u.entries) ? u.entries : []).map((e) => {
        const r = obj(e);
        return { content: str(r.content), status: str(r.status, "pending"), priority: str(r.priority, "medium") };
      });
      // ACP sends the whole plan each time: the turn's plan is updated in
      // place unless the agent has said something since.
      const last = ss.items[ss.items.length - 1];
      const at = ss.items.findLastIndex((i) => i.type === "plan");
      const turnStart = ss.items.findLastIndex((i) => i.type === "prompt" || i.type === "turnEnd");
      if (at > turnStart && last && (last.type === "plan" || last.type === "tool" || last.type === "thought")) {
        const items = ss.items.slice();
        items[at] = { type: "plan", entries, seq: items[at]!.seq };
        return { ...ss, items };
      }
      return { ...ss, items: [...ss.items, { type: "plan", entries, seq }] };
    }
    case "tool_call": {
      const toolCallId = str(u.toolCallId);
      const call: ToolCall = {
        toolCallId,
        title: str(u.title, toolCallId),
        kind: str(u.kind, "other"),
        status: str(u.status, "pending"),
        content: Array.isArray(u.content) ? u.content : [],
      };
      const known = toolCallId in ss.toolCalls;
      return {
        ...ss,
        toolCalls: { ...ss.toolCalls, [toolCallId]: call },
        items: known ? ss.items : [...ss.items, { type: "tool", toolCallId, seq }],
      };
    }
    case "tool_call_update": {
      const toolCallId = str(u.toolCallId);
      const prev = ss.toolCalls[toolCallId];
      if (!prev) return ss;
      const call: ToolCall = {
        ...prev,
        title: str(u.title, prev.title),
        kind: str(u.kind, prev.kind),
        status: str(u.status, prev.status),
        content: Array.isArray(u.content) ? u.content : prev.content,
      };
      // The log has no "permission answered" event; a tool call that moves
      // past pending is the sign that its request was answered.
      const permissions =
        call.status === "pending"
          ? ss.permissions
          : Object.fromEntries(
              Object.entries(ss.permissions).filter(([, p]) => obj(p.toolCall).toolCallId !== toolCallId),
            );
      return { ...ss, permissions, toolCalls: { ...ss.toolCalls, [toolCallId]: call } };
    }
    default:
      return ss;
  }
}

function participantOf(v: unknown): Participant | null {
  const p = obj(v);
  if (typeof p.id !== "string") return null;
  const role: Role = ROLES.find((r) => r === p.role) ?? "viewer";
  return {
    id: p.id,
    name: str(p.name, p.id),
    color: str(p.color, "#888888"),
    role,
    connected: p.connected === true,
    lastSeen: num(p.lastSeen),
  };
}

function holderOf(v: unknown): Holder | null {
  const h = obj(v);
  if (h.kind === "person" && typeof h.participantId === "string") return { kind: "person", participantId: h.participantId };
  if (h.kind === "agent" && typeof h.sessionId === "string") {
    return { kind: "agent", sessionId: h.sessionId, supervisor: str(h.supervisor) };
  }
  return null;
}

function putParticipant(s: State, p: Participant): State {
  const you = s.you && s.you.id === p.id ? p : s.you;
  return { ...s, you, participants: { ...s.participants, [p.id]: p } };
}

const withoutRequest = (s: State, id: string): State =>
  s.controlRequests.includes(id) ? { ...s, controlRequests: s.controlRequests.filter((r) => r !== id) } : s;

/** Participant and control events (docs/protocol.md, Events), folded as the
 * host's control task changes its own state. Welcome's snapshot holds the
 * participants, the holder and the control requests as of `authSeq`, so
 * older events change none of them; the owner's welcome holds the join
 * requests as of `joinSeq`. */
function applyAccessEvent(s: State, name: string, d: Record<string, unknown>, seq: number): State {
  const inSnapshot = seq <= s.authSeq;
  if (inSnapshot && name !== "joinRequested" && name !== "joinResolved") return s;
  if (seq <= s.joinSeq && (name === "joinRequested" || name === "joinResolved")) return s;
  switch (name) {
    case "participantJoined":
      return applyParticipant(s, d, inSnapshot);
    case "participantUpdated": {
      // A member made a viewer can no longer ask for control.
      const p = participantOf(d.participant);
      const out = applyParticipant(s, d, inSnapshot);
      return p?.role === "viewer" ? withoutRequest(out, p.id) : out;
    }
    case "participantLeft": {
      const id = str(d.participantId);
      if (d.reason === "removed") {
        // The host forgets a removed member: gone from the list, and their
        // request with them.
        const out = withoutRequest(s, id);
        if (inSnapshot || !(id in out.participants)) return out;
        const participants = { ...out.participants };
        delete participants[id];
        return { ...out, participants };
      }
      const p = s.participants[id];
      return p && !inSnapshot ? putParticipant(s, { ...p, connected: false, lastSeen: num(d.lastSeen, p.lastSeen) }) : s;
    }
    case "controlRequested": {
      const id = str(d.participantId);
      return s.controlRequests.includes(id) ? s : { ...s, controlRequests: [...s.controlRequests, id] };
    }
    case "controlDenied":
      return withoutRequest(s, str(d.participantId));
    case "controlChanged": {
      const holder = holderOf(d.holder);
      // The new holder's own request is answered; others stay pending.
      const out = holder?.kind === "person" ? withoutRequest(s, holder.participantId) : s;
      return inSnapshot ? out : { ...out, control: holder };
    }
    case "joinRequested": {
      const requestId = str(d.requestId);
      return { ...s, joinRequests: { ...s.joinRequests, [requestId]: joinRequest(requestId, str(d.name, "someone"), d.code, d.fingerprint) } };
    }
    case "joinResolved": {
      const requestId = str(d.requestId);
      if (!(requestId in s.joinRequests)) return s;
      const joinRequests = { ...s.joinRequests };
      delete joinRequests[requestId];
      return { ...s, joinRequests };
    }
    default:
      return s;
  }
}

function applyParticipant(s: State, d: Record<string, unknown>, inSnapshot: boolean): State {
  const p = participantOf(d.participant);
  return p && !inSnapshot ? putParticipant(s, p) : s;
}
