// One event of a VM's log, as the UI folds it. Live binary frames, live text
// event frames and the JSON view that getEvents returns all become this one
// shape, so the reducer cannot tell a replay from a live stream.
import {
  BINARY_HEADER,
  BINARY_HEADER_LEN,
  BINARY_KIND_EVENT,
  BinaryKind,
  type EventFrame,
} from "./protocol.gen";

export interface JsonEvent {
  kind: "json";
  seq: number;
  ts: number;
  name: string;
  data: unknown;
}

export interface BytesEvent {
  kind: "bytes";
  seq: number;
  ts: number;
  name: string;
  binaryKind: BinaryKind;
  /** shellId for shellData, pid for processOutput, the emit id for testBytes. */
  id: number;
  bytes: Uint8Array;
}

export type LogEvent = JsonEvent | BytesEvent;

function isKind(k: number): k is BinaryKind {
  return k in BINARY_KIND_EVENT;
}

function u64(view: DataView, at: number): number {
  // Seqs and timestamps stay far below 2^53.
  return Number(view.getBigUint64(at, false));
}

/** Decodes a binary frame; null for a malformed one, which clients skip. */
export function decodeBinaryFrame(buf: ArrayBuffer): BytesEvent | null {
  if (buf.byteLength < BINARY_HEADER_LEN) return null;
  const view = new DataView(buf);
  const kind = view.getUint8(BINARY_HEADER.kind.offset);
  if (!isKind(kind)) return null;
  return {
    kind: "bytes",
    seq: u64(view, BINARY_HEADER.seq.offset),
    ts: u64(view, BINARY_HEADER.ts.offset),
    name: BINARY_KIND_EVENT[kind],
    binaryKind: kind,
    id: view.getUint32(BINARY_HEADER.id.offset, false),
    bytes: new Uint8Array(buf, BINARY_HEADER_LEN),
  };
}

export function base64ToBytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function record(v: unknown): Record<string, unknown> | null {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
}

/** A text event frame or a getEvents entry; binary events in their JSON view
 * (base64 payload) become BytesEvents like their live frames. */
export function fromEventFrame(frame: EventFrame): LogEvent {
  const { seq, ts, name, data } = frame;
  const d = record(data);
  if (d && typeof d.data === "string") {
    const bytes = () => base64ToBytes(d.data as string);
    if (name === "shellData" && typeof d.shellId === "number") {
      return { kind: "bytes", seq, ts, name, binaryKind: BinaryKind.ShellData, id: d.shellId, bytes: bytes() };
    }
    if (name === "processOutput" && typeof d.pid === "number") {
      const binaryKind = d.stream === "stderr" ? BinaryKind.ProcessStderr : BinaryKind.ProcessStdout;
      return { kind: "bytes", seq, ts, name, binaryKind, id: d.pid, bytes: bytes() };
    }
    if (name === "testBytes" && typeof d.id === "number") {
      return { kind: "bytes", seq, ts, name, binaryKind: BinaryKind.TestBytes, id: d.id, bytes: bytes() };
    }
  }
  return { kind: "json", seq, ts, name, data };
}

function bytesToBase64(bytes: Uint8Array): string {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** The event as the host's JSON view writes it (for the JSON Lines export). */
export function toEventFrame(ev: LogEvent): EventFrame & { type: "event" } {
  if (ev.kind === "json") return { type: "event", seq: ev.seq, ts: ev.ts, name: ev.name, data: ev.data };
  const data = bytesToBase64(ev.bytes);
  switch (ev.binaryKind) {
    case BinaryKind.ShellData:
      return { type: "event", seq: ev.seq, ts: ev.ts, name: ev.name, data: { data, shellId: ev.id } };
    case BinaryKind.ProcessStdout:
    case BinaryKind.ProcessStderr: {
      const stream = ev.binaryKind === BinaryKind.ProcessStderr ? "stderr" : "stdout";
      return { type: "event", seq: ev.seq, ts: ev.ts, name: ev.name, data: { data, pid: ev.id, stream } };
    }
    case BinaryKind.TestBytes:
      return { type: "event", seq: ev.seq, ts: ev.ts, name: ev.name, data: { data, id: ev.id } };
  }
}
