import { describe, expect, it } from "vitest";
import { FALLBACK_AGENTS, keyNotice, keyOptions, optionLabel, parseAgentList, type AgentEntry, type AgentList } from "./agents";

const ownerAnswer = {
  agents: [
    { agentType: "claude", availability: "onFirstUse", keyVariable: "ANTHROPIC_API_KEY", keySaved: true },
    { agentType: "opencode", availability: "missing", keyVariable: null, keySaved: false },
    { agentType: "scripted", availability: "installed", keyVariable: null, keySaved: false },
  ],
  keyring: { available: true },
};

function three(list: AgentList): [AgentEntry, AgentEntry, AgentEntry] {
  const [a, b, c] = list.agents;
  if (!a || !b || !c) throw new Error("three agents expected");
  return [a, b, c];
}

const noKeyring = "no OS keyring is available: no D-Bus session; pass the key in the session's env instead";

describe("agent picker", () => {
  it("parses listAgents, scripted first, and falls back on anything else", () => {
    const list = parseAgentList(ownerAnswer);
    expect(list.agents.map((a) => a.agentType)).toEqual(["scripted", "claude", "opencode"]);
    expect(list.keyring).toEqual({ available: true });
    expect(list.agents[1]).toEqual(ownerAnswer.agents[0]);
    expect(parseAgentList(null)).toBe(FALLBACK_AGENTS);
    expect(parseAgentList({ agents: [{ agentType: "x", availability: "odd" }] }).agents[0]).toEqual({
      agentType: "x",
      availability: "unknown",
      keyVariable: null,
    });
    // A member's answer has no keySaved and no keyring.
    const member = parseAgentList({ agents: [{ agentType: "claude", availability: "installed", keyVariable: "ANTHROPIC_API_KEY" }] });
    expect(member.keyring).toBeUndefined();
    expect(member.agents[0]?.keySaved).toBeUndefined();
  });

  it("labels each agent: installed or not, which key it needs", () => {
    const [scripted, claude, opencode] = three(parseAgentList(ownerAnswer));
    expect(optionLabel(scripted)).toBe("scripted — installed");
    expect(optionLabel(claude)).toBe("claude — downloads on first use, needs ANTHROPIC_API_KEY (key saved)");
    expect(optionLabel(opencode)).toBe("opencode — not installed");
    const [fs, fc] = three(FALLBACK_AGENTS);
    expect(optionLabel(fs)).toBe("scripted");
    expect(optionLabel(fc)).toBe("claude — needs ANTHROPIC_API_KEY");
  });

  it("puts a typed key in env, else asks for the saved one", () => {
    const [scripted, claude] = three(parseAgentList(ownerAnswer));
    expect(keyOptions(claude, " sk-1 ", true)).toEqual({ env: { ANTHROPIC_API_KEY: "sk-1" } });
    expect(keyOptions(claude, "", true)).toEqual({ env: {}, useSavedKey: true });
    expect(keyOptions(claude, "", false)).toEqual({ env: {} });
    const unsaved: AgentEntry = { ...claude, keySaved: false };
    expect(keyOptions(unsaved, "", true)).toEqual({ env: {} });
    expect(keyOptions(scripted, "sk-1", true)).toEqual({ env: {} });
    expect(keyOptions(undefined, "sk-1", true)).toEqual({ env: {} });
  });

  it("says which key is missing, and when no keyring is there", () => {
    const list = parseAgentList(ownerAnswer);
    const [scripted, claude, opencode] = three(list);
    expect(keyNotice(scripted, list, "", false, true)).toBeNull();
    expect(keyNotice(claude, list, "", true, true)).toBeNull();
    expect(keyNotice(claude, list, "sk", false, true)).toBeNull();
    expect(keyNotice(claude, list, "", false, true)).toContain('"Save key…"');
    expect(keyNotice(opencode, list, "", false, true)).toContain("not installed");
    const none = parseAgentList({ ...ownerAnswer, keyring: { available: false, message: noKeyring } });
    const unsaved = { ...claude, keySaved: false };
    expect(keyNotice(unsaved, none, "", true, true)).toContain("It cannot be saved: no OS keyring is available");
    expect(none.keyring?.message).toBe(noKeyring);
    const { keySaved: _saved, ...plain } = claude;
    const member = keyNotice(plain, FALLBACK_AGENTS, "", true, false);
    expect(member).toContain("needs an API key (ANTHROPIC_API_KEY)");
    expect(member).not.toContain("Save key");
  });
});
