// Access and control as the UI sees them: the credential a page proves
// itself with, and who may do what right now (type, answer a permission,
// grant control), with the reason when not. The wire shapes (Participant,
// Holder, Role, Hello) are the generated ones in protocol.gen.ts.
import type { Hello, Holder, Participant } from "./protocol.gen";

/** What a page sends in hello to prove who it is (at most one is used). */
export type Credential = Pick<Hello, "token" | "joinCode" | "loginCode" | "requestJoin">;

const TOKEN_KEY = "ensemble.token";
const NAME_KEY = "ensemble.name";

/**
 * Reads the credential from the URL fragment (`#token=`, `#login=`, `#join=`)
 * or else localStorage, and removes it from the address bar so it is not
 * shared by copying the URL or kept in history. An empty credential means
 * the page must ask to join.
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

/** A token the host refused is forgotten, so the page offers to join. */
export function forgetToken(storage: Storage | null): void {
  storage?.removeItem(TOKEN_KEY);
}

export function storedName(storage: Storage | null): string {
  return storage?.getItem(NAME_KEY) ?? "";
}

export function storeName(storage: Storage | null, name: string): void {
  storage?.setItem(NAME_KEY, name);
}

/** Does joining with this credential need a display name first? */
export function needsName(cred: Credential): boolean {
  return !cred.token && !cred.loginCode;
}

/** Hello fields for a credential, in the host's order of precedence. */
export function helloFields(cred: Credential): Credential {
  if (cred.token) return { token: cred.token };
  if (cred.joinCode) return { joinCode: cred.joinCode };
  if (cred.loginCode) return { loginCode: cred.loginCode };
  if (cred.requestJoin) return { requestJoin: true };
  return {};
}

export type People = Record<string, Participant>;

const nameOf = (people: People, id: string) => people[id]?.name ?? id;

/** Who holds control, in words ("nobody", "Bea", "the agent (s1) for Ann"). */
export function holderText(holder: Holder | null | undefined, people: People, you?: Participant | null): string {
  if (!holder) return "nobody";
  if (holder.kind === "person") return holder.participantId === you?.id ? "you" : nameOf(people, holder.participantId);
  return `the agent (${holder.sessionId}) for ${holder.supervisor === you?.id ? "you" : nameOf(people, holder.supervisor)}`;
}

/** The person who answers control requests and permissions: the holder, or
 * the supervisor of the agent holding control. */
export function answererId(holder: Holder | null): string | null {
  if (!holder) return null;
  return holder.kind === "person" ? holder.participantId : holder.supervisor;
}

/** Why you may not send input (type, prompt, open a shell) now, or null. */
export function inputBlockedReason(you: Participant | null, holder: Holder | null, people: People): string | null {
  if (!you) return "Not signed in";
  if (you.role === "viewer") return "Viewers cannot type";
  if (!holder) return "Nobody has control: take it to type";
  if (holder.kind === "agent") {
    return holder.supervisor === you.id ? "The agent is driving: take over to type" : `The agent is driving for ${nameOf(people, holder.supervisor)}`;
  }
  if (holder.participantId === you.id) return null;
  return `${nameOf(people, holder.participantId)} has control`;
}

/** Why you may not answer the agent's permission requests (or cancel its
 * turn), or null: the holder may, and the supervisor while the agent holds
 * control. */
export function answerBlockedReason(you: Participant | null, holder: Holder | null, people: People): string | null {
  if (!you) return "Not signed in";
  if (you.role === "viewer") return "Viewers cannot answer";
  const who = answererId(holder);
  if (who === you.id) return null;
  return who ? `${nameOf(people, who)} answers` : "Nobody has control: take it to answer";
}

/** A refused action in words; `not_in_control` says who holds control. */
export function explainError(e: unknown, people: People, you?: Participant | null): string {
  if (typeof e === "object" && e !== null && "code" in e && (e as { code: unknown }).code === "not_in_control") {
    const data = (e as { data?: unknown }).data;
    const holder = typeof data === "object" && data !== null ? ((data as { holder?: Holder | null }).holder ?? null) : null;
    return holder ? `Not in control: ${holderText(holder, people, you)} holds it` : "Not in control: nobody holds it (take control first)";
  }
  return e instanceof Error ? e.message : String(e);
}
