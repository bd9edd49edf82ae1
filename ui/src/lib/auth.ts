// Participants, control and credentials: the protocol additions of the
// "Control handoff, participants and access" issue, coded against their
// planned shape (docs/protocol.md will carry them once they land; the
// generated protocol.gen.ts then holds the message fields). Everything the UI
// knows about them is in this module, so adapting to the final shape is local.

export type Role = "owner" | "collaborator" | "viewer";

export interface Participant {
  id: string;
  name: string;
  color: string;
  role: Role;
  connected: boolean;
  lastSeen: number;
}

export type Holder =
  | { kind: "person"; participantId: string }
  | { kind: "agent"; sessionId: string; supervisor: string };

/** Fields welcome gains; all absent on a host without access control. */
export interface WelcomeAuth {
  you?: Participant;
  participants?: Participant[];
  control?: Holder | null;
  token?: string;
}

/** What a client may put in hello to prove who it is. */
export interface Credential {
  token?: string;
  joinCode?: string;
  loginCode?: string;
}

const TOKEN_KEY = "ensemble.token";

/**
 * Reads the credential from the URL fragment (`#token=`, `#login=`, `#join=`)
 * or else localStorage, and removes it from the address bar so it is not
 * shared by copying the URL or kept in history.
 */
export function takeCredential(loc: Location, storage: Storage | null, history: History | null): Credential {
  const params = new URLSearchParams(loc.hash.replace(/^#/, ""));
  const cred: Credential = {};
  const token = params.get("token");
  const login = params.get("login");
  const join = params.get("join");
  if (token) cred.token = token;
  if (login) cred.loginCode = login;
  if (join) cred.joinCode = join;
  if (token || login || join) {
    if (token) storage?.setItem(TOKEN_KEY, token);
    history?.replaceState(null, "", loc.pathname + loc.search);
  } else {
    const stored = storage?.getItem(TOKEN_KEY);
    if (stored) cred.token = stored;
  }
  return cred;
}

export function storeToken(storage: Storage | null, token: string): void {
  storage?.setItem(TOKEN_KEY, token);
}

/** Hello fields for a credential; one-time codes are spent once a token exists. */
export function helloFields(cred: Credential): Record<string, string> {
  if (cred.token) return { token: cred.token };
  const out: Record<string, string> = {};
  if (cred.loginCode) out.loginCode = cred.loginCode;
  if (cred.joinCode) out.joinCode = cred.joinCode;
  return out;
}

/** Why the local user may not send input right now, or null when they may. */
export function inputBlockedReason(
  you: Participant | null,
  control: Holder | null | undefined,
  participants: Record<string, Participant>,
  accessControl: boolean,
): string | null {
  if (!accessControl) return null;
  if (!you) return "Not signed in";
  if (you.role === "viewer") return "Viewers cannot type";
  if (!control) return "Nobody has control: take it to type";
  if (control.kind === "agent") return "The agent is driving";
  if (control.participantId === you.id) return null;
  const who = participants[control.participantId]?.name ?? "someone else";
  return `${who} has control`;
}

/** Event names of the access additions, for history reads that list names. */
export const ACCESS_EVENTS = [
  "participantJoined",
  "participantLeft",
  "participantUpdated",
  "controlRequested",
  "controlDenied",
  "controlChanged",
  "joinRequested",
  "joinResolved",
] as const;
