// What an agent's tool call asks for, in the terms of its kind: a command
// with its working directory, a file edit as a diff, a read with its path.
// Pure: the permission dock, the transcript and the tests use it.
import type { ToolCall } from "./reducer";

export interface DiffLine {
  op: " " | "+" | "-";
  text: string;
}

export interface FileDiff {
  path: string;
  lines: DiffLine[];
  /** No old text: the file is new (or the agent did not say). */
  created: boolean;
}

export interface Described {
  kind: "execute" | "edit" | "read" | "delete" | "move" | "fetch" | "other";
  title: string;
  /** execute: the command line and where it runs. */
  command?: string;
  cwd?: string;
  /** read, delete, move, fetch: what it touches. */
  paths: string[];
  /** edit: the changes, one per file. */
  diffs: FileDiff[];
  /** Anything else the agent sent, for the curious (JSON). */
  raw?: string;
}

function obj(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}
const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);

function quote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, "'\\''")}'`;
}

/** The command line an execute call's raw input names, if any. */
function commandOf(input: Record<string, unknown>): string | undefined {
  const c = input.command ?? input.cmd;
  const args = Array.isArray(input.args) ? input.args.filter((a): a is string => typeof a === "string") : [];
  if (Array.isArray(c)) return c.filter((a): a is string => typeof a === "string").map(quote).join(" ") || undefined;
  if (typeof c === "string" && c) return args.length ? [c, ...args.map(quote)].join(" ") : c;
  return undefined;
}

/** A line diff (longest common subsequence) of two texts; large texts are
 * shown as removed then added. */
export function lineDiff(oldText: string, newText: string): DiffLine[] {
  const a = oldText === "" ? [] : oldText.split("\n");
  const b = newText === "" ? [] : newText.split("\n");
  if (a.length * b.length > 250_000) {
    return [...a.map((text) => ({ op: "-" as const, text })), ...b.map((text) => ({ op: "+" as const, text }))];
  }
  // lcs[i][j]: the common length of a[i..] and b[j..].
  const lcs: number[][] = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i]![j] = a[i] === b[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
    }
  }
  const out: DiffLine[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      out.push({ op: " ", text: a[i]! });
      i++;
      j++;
    } else if (lcs[i + 1]![j]! >= lcs[i]![j + 1]!) out.push({ op: "-", text: a[i++]! });
    else out.push({ op: "+", text: b[j++]! });
  }
  while (i < a.length) out.push({ op: "-", text: a[i++]! });
  while (j < b.length) out.push({ op: "+", text: b[j++]! });
  return out;
}

/** The diffs among a tool call's content (ACP `{type: "diff", path, oldText, newText}`). */
export function diffsOf(content: unknown[]): FileDiff[] {
  return content
    .map(obj)
    .filter((c) => c.type === "diff")
    .map((c) => {
      const oldText = typeof c.oldText === "string" ? c.oldText : null;
      return { path: str(c.path) ?? "", lines: lineDiff(oldText ?? "", typeof c.newText === "string" ? c.newText : ""), created: oldText === null };
    });
}

/** Describes the tool call of a permission request; `known` is the same call
 * as the transcript has it (a request may send only what changed). */
export function describeToolCall(toolCall: unknown, known?: ToolCall): Described {
  const t = obj(toolCall);
  const input = obj(t.rawInput);
  const kind = str(t.kind) ?? known?.kind ?? "other";
  const title = str(t.title) ?? known?.title ?? str(t.toolCallId) ?? "a tool call";
  const content = Array.isArray(t.content) ? t.content : (known?.content ?? []);
  const locations = (Array.isArray(t.locations) ? t.locations : []).map((l) => str(obj(l).path)).filter((p): p is string => !!p);
  const inputPaths = [input.path, input.file_path, input.filePath, input.abs_path].map(str).filter((p): p is string => !!p);
  const paths = [...new Set([...locations, ...inputPaths])];
  const raw = Object.keys(input).length ? JSON.stringify(input, null, 1) : undefined;
  switch (kind) {
    case "execute": {
      const command = commandOf(input) ?? title;
      const cwd = str(input.cwd) ?? str(input.workdir) ?? str(input.directory);
      return { kind, title, command, cwd, paths, diffs: [] };
    }
    case "edit": {
      const diffs = diffsOf(content);
      return { kind, title, paths, diffs, raw: diffs.length ? undefined : raw };
    }
    case "read":
    case "delete":
    case "move":
    case "fetch":
      return { kind, title, paths: kind === "fetch" && str(input.url) ? [str(input.url)!] : paths, diffs: [], raw: paths.length ? undefined : raw };
    default:
      return { kind: "other", title, paths, diffs: diffsOf(content), raw };
  }
}

/** One line for a toast: "run `ls -la` in /work", "edit notes/todo.txt". */
export function summary(d: Described): string {
  switch (d.kind) {
    case "execute":
      return `run ${d.command}${d.cwd ? ` in ${d.cwd}` : ""}`;
    case "edit":
      return `edit ${d.diffs.map((x) => x.path).join(", ") || d.paths.join(", ") || d.title}`;
    case "read":
      return `read ${d.paths.join(", ") || d.title}`;
    case "delete":
      return `delete ${d.paths.join(", ") || d.title}`;
    default:
      return d.title;
  }
}
