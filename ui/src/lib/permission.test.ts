import { describe, expect, it } from "vitest";
import { describeToolCall, lineDiff, summary } from "./permission";

describe("permission requests", () => {
  it("show a command with its cwd", () => {
    const d = describeToolCall({ toolCallId: "c1", kind: "execute", title: "Run tests", rawInput: { command: "cargo", args: ["test", "a b"], cwd: "/work" } });
    expect(d).toMatchObject({ kind: "execute", command: "cargo test 'a b'", cwd: "/work" });
    expect(summary(d)).toBe("run cargo test 'a b' in /work");
  });

  it("show an edit as a diff", () => {
    const d = describeToolCall({
      toolCallId: "c2",
      kind: "edit",
      title: "write notes/todo.txt",
      content: [{ type: "diff", path: "/p/notes/todo.txt", oldText: "a\nb\nc", newText: "a\nB\nc\nd" }],
    });
    expect(d.kind).toBe("edit");
    expect(d.diffs[0]!.path).toBe("/p/notes/todo.txt");
    expect(d.diffs[0]!.lines).toEqual([
      { op: " ", text: "a" },
      { op: "-", text: "b" },
      { op: "+", text: "B" },
      { op: " ", text: "c" },
      { op: "+", text: "d" },
    ]);
    expect(summary(d)).toBe("edit /p/notes/todo.txt");
    // The scripted agent's new file: no oldText.
    const created = describeToolCall({ kind: "edit", content: [{ type: "diff", path: "/p/x", newText: "buy milk" }] });
    expect(created.diffs[0]).toMatchObject({ created: true, lines: [{ op: "+", text: "buy milk" }] });
  });

  it("show a read with its path, and fall back to the transcript's call", () => {
    const d = describeToolCall({ toolCallId: "c3", locations: [{ path: "/p/README.md" }] }, { toolCallId: "c3", title: "Read README", kind: "read", status: "pending", content: [] });
    expect(d).toMatchObject({ kind: "read", title: "Read README", paths: ["/p/README.md"] });
    expect(summary(d)).toBe("read /p/README.md");
  });

  it("diff large texts without quadratic work", () => {
    const big = Array.from({ length: 1000 }, (_, i) => `l${i}`).join("\n");
    const lines = lineDiff(big, big + "\nx");
    expect(lines.length).toBe(2001);
  });
});
