import { describe, expect, it } from "vitest";
import type { LogEvent } from "./events";
import { toAsciicast } from "./history";
import { BinaryKind } from "./protocol.gen";

const json = (seq: number, name: string, data: unknown): LogEvent => ({ kind: "json", seq, ts: 1_700_000_000_000 + seq * 1000, name, data });
const bytes = (seq: number, text: string): LogEvent => ({
  kind: "bytes",
  seq,
  ts: 1_700_000_000_000 + seq * 1000,
  name: "shellData",
  binaryKind: BinaryKind.ShellData,
  id: 1,
  bytes: new TextEncoder().encode(text),
});

describe("asciicast export", () => {
  it("has the shell's real size at the start, and its later resizes", () => {
    const log = [
      json(1, "shellOpened", { shellId: 1, cols: 100, rows: 30, command: "/bin/bash" }),
      json(2, "shellResized", { shellId: 1, cols: 128, rows: 41 }),
      bytes(3, "$ "),
      json(4, "shellResized", { shellId: 1, cols: 90, rows: 20 }),
      bytes(5, "ls\r\n"),
    ];
    const lines = toAsciicast(log, 1).trim().split("\n").map((l) => JSON.parse(l));
    expect(lines[0]).toMatchObject({ version: 2, width: 128, height: 41, title: "/bin/bash" });
    expect(lines.slice(1)).toEqual([
      [2, "o", "$ "],
      [3, "r", "90x20"],
      [4, "o", "ls\r\n"],
    ]);
  });
});
