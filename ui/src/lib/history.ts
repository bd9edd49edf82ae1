// History: reading a VM's whole log, and exporting it (JSON Lines for the
// log, asciicast v2 for one shell). Pure except for the reads.
import type { VmConnection } from "./connection.svelte";
import { fromEventFrame, toEventFrame, type LogEvent } from "./events";
import { BinaryKind, MAX_PAGE_LIMIT, type EventFrame } from "./protocol.gen";

/** Reads the log from its start up to the head, page by page. */
export async function readLog(conn: VmConnection): Promise<LogEvent[]> {
  const out: LogEvent[] = [];
  let since = 0;
  for (;;) {
    const page = (await conn.call("getEvents", { since, limit: MAX_PAGE_LIMIT })) as { events: EventFrame[]; more: boolean; next: number };
    for (const f of page.events) out.push(fromEventFrame(f));
    if (!page.more) return out;
    since = page.next;
  }
}

export function toJsonLines(events: LogEvent[]): string {
  return events.map((e) => JSON.stringify(toEventFrame(e)) + "\n").join("");
}

function shellIdOf(ev: LogEvent): number | null {
  if (ev.kind === "bytes") return ev.binaryKind === BinaryKind.ShellData ? ev.id : null;
  const d = ev.data as { shellId?: unknown } | null;
  return ev.name.startsWith("shell") && typeof d?.shellId === "number" ? d.shellId : null;
}

/** The events of one shell, in log order. */
export function shellEvents(events: LogEvent[], shellId: number): LogEvent[] {
  return events.filter((e) => shellIdOf(e) === shellId);
}

/** asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): a header
 * line, then `[seconds, "o", text]` for output and `[seconds, "r", "COLSxROWS"]`
 * for resizes, times relative to the shell's opening. */
export function toAsciicast(events: LogEvent[], shellId: number): string {
  const own = shellEvents(events, shellId);
  const opened = own.find((e) => e.name === "shellOpened");
  const od = (opened?.kind === "json" ? opened.data : {}) as { cols?: number; rows?: number; command?: string };
  // The size the shell really had when its output began: a holder's window
  // resizes it right after it opens.
  const firstOutput = own.findIndex((e) => e.kind === "bytes");
  const before = firstOutput < 0 ? own : own.slice(0, firstOutput);
  const start = before.filter((e) => e.kind === "json" && e.name === "shellResized").pop();
  const sd = (start?.kind === "json" ? start.data : od) as { cols?: number; rows?: number };
  const t0 = opened?.ts ?? own[0]?.ts ?? 0;
  const lines = [
    JSON.stringify({ version: 2, width: sd.cols ?? od.cols ?? 80, height: sd.rows ?? od.rows ?? 24, timestamp: Math.floor(t0 / 1000), title: od.command ?? `shell ${shellId}` }),
  ];
  const decoder = new TextDecoder();
  const at = (ts: number) => Math.max(0, (ts - t0) / 1000);
  for (const e of own) {
    if (e.kind === "bytes") {
      const text = decoder.decode(e.bytes, { stream: true });
      if (text) lines.push(JSON.stringify([at(e.ts), "o", text]));
    } else if (e.name === "shellResized" && !before.includes(e)) {
      const d = e.data as { cols?: number; rows?: number };
      lines.push(JSON.stringify([at(e.ts), "r", `${d.cols}x${d.rows}`]));
    }
  }
  return lines.join("\n") + "\n";
}
