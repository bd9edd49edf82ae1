// The agent picker's pure logic: what `listAgents` says about each agent
// type (installed or not, which API key it needs, whether the owner saved
// one), in words, and what `createSession` gets for a key (docs/protocol.md,
// Agents and API keys). Keys are never kept here: a typed key goes into one
// call's `env` or into `saveAgentKey`, nowhere else.

export type Availability = "installed" | "onFirstUse" | "missing" | "unknown";

export interface AgentEntry {
  agentType: string;
  availability: Availability;
  keyVariable: string | null;
  /** The owner's answer only. */
  keySaved?: boolean;
}

export interface AgentList {
  agents: AgentEntry[];
  /** The owner's answer only. */
  keyring?: { available: boolean; message?: string };
}

/** Before `listAgents` answers (or on a host without it): the built-in
 * registry, availability unknown. */
export const FALLBACK_AGENTS: AgentList = {
  agents: [
    { agentType: "scripted", availability: "unknown", keyVariable: null },
    { agentType: "claude", availability: "unknown", keyVariable: "ANTHROPIC_API_KEY" },
    { agentType: "gemini", availability: "unknown", keyVariable: "GEMINI_API_KEY" },
    { agentType: "codex", availability: "unknown", keyVariable: "OPENAI_API_KEY" },
    { agentType: "pi", availability: "unknown", keyVariable: null },
    { agentType: "opencode", availability: "unknown", keyVariable: null },
  ],
};

/** A `listAgents` answer, checked; the fallback if it is not one. */
export function parseAgentList(v: unknown): AgentList {
  if (typeof v !== "object" || v === null || !Array.isArray((v as AgentList).agents)) return FALLBACK_AGENTS;
  const raw = v as { agents: unknown[]; keyring?: unknown };
  const agents: AgentEntry[] = [];
  for (const a of raw.agents) {
    if (typeof a !== "object" || a === null) continue;
    const e = a as Record<string, unknown>;
    if (typeof e.agentType !== "string") continue;
    const availability = (["installed", "onFirstUse", "missing"] as const).find((x) => x === e.availability) ?? "unknown";
    agents.push({
      agentType: e.agentType,
      availability,
      keyVariable: typeof e.keyVariable === "string" ? e.keyVariable : null,
      ...(typeof e.keySaved === "boolean" ? { keySaved: e.keySaved } : {}),
    });
  }
  const k = raw.keyring as { available?: unknown; message?: unknown } | undefined;
  const keyring =
    typeof k === "object" && k !== null && typeof k.available === "boolean"
      ? { available: k.available, ...(typeof k.message === "string" ? { message: k.message } : {}) }
      : undefined;
  // The scripted agent first: it needs nothing and always works.
  agents.sort((a, b) => (a.agentType === "scripted" ? -1 : b.agentType === "scripted" ? 1 : 0));
  return keyring ? { agents, keyring } : { agents };
}

export function availabilityText(a: Availability): string {
  switch (a) {
    case "installed":
      return "installed";
    case "onFirstUse":
      return "downloads on first use";
    case "missing":
      return "not installed";
    default:
      return "";
  }
}

/** The picker's option text: "claude — downloads on first use, needs
 * ANTHROPIC_API_KEY (key saved)". */
export function optionLabel(a: AgentEntry): string {
  const parts = [availabilityText(a.availability)].filter((p) => p);
  if (a.keyVariable) parts.push(`needs ${a.keyVariable}${a.keySaved ? " (key saved)" : ""}`);
  return parts.length ? `${a.agentType} — ${parts.join(", ")}` : a.agentType;
}

/** What `createSession`/`resumeSession` get for the key: a key typed for
 * this session wins, then the saved one (the owner's, when chosen). */
export function keyOptions(
  a: AgentEntry | undefined,
  typedKey: string,
  useSaved: boolean,
): { env: Record<string, string>; useSavedKey?: true } {
  const env: Record<string, string> = {};
  if (!a?.keyVariable) return { env };
  const typed = typedKey.trim();
  if (typed) {
    env[a.keyVariable] = typed;
    return { env };
  }
  if (useSaved && a.keySaved) return { env, useSavedKey: true };
  return { env };
}

/** The notice under the picker, or null: which key is missing and how to
 * give it, or why the agent cannot start. */
export function keyNotice(
  a: AgentEntry | undefined,
  list: AgentList,
  typedKey: string,
  useSaved: boolean,
  owner: boolean,
): string | null {
  if (!a) return null;
  if (a.availability === "missing")
    return `${a.agentType} is not installed on the host: its command is not found, so a session would fail to start.`;
  if (!a.keyVariable || typedKey.trim() || (useSaved && a.keySaved)) return null;
  const base = `${a.agentType} needs an API key (${a.keyVariable}): agents start with a clean environment. Paste it above for this session; only its agent gets it, and it is never logged or shown to the others.`;
  if (!owner) return `${base} Without it the session starts but every prompt fails.`;
  if (list.keyring && !list.keyring.available)
    return `${base} It cannot be saved: no OS keyring is available on the host's machine ("Save key…" says why).`;
  return `${base} Or save it once in the OS keyring with "Save key…".`;
}
