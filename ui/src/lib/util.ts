// Small helpers the components share.

/** The VM key from the page URL: `?key=a&key=b`, else ["default"]. */
export function keyFromUrl(loc: Location): string[] {
  const parts = new URLSearchParams(loc.search).getAll("key").filter((k) => k.length > 0);
  return parts.length > 0 ? parts : ["default"];
}

export function download(name: string, type: string, body: BlobPart[]): void {
  const url = URL.createObjectURL(new Blob(body, { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export function exitText(exit: { exitCode: number | null; signal: number | null } | null): string {
  if (!exit) return "running";
  if (exit.signal !== null) return `killed by signal ${exit.signal}`;
  return `exit ${exit.exitCode ?? "?"}`;
}

/** A session's readable name: the agent and what its first prompt said. */
export function sessionName(s: { agentName: string; title: string | null; sessionId: string }): string {
  return s.title ? `${s.agentName}: ${s.title}` : `${s.agentName} (new session)`;
}
