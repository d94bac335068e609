// {{name}}: a registry-token authorization policy.
//
// Everyone may pull the repositories `pull` lists; a caller may push to those `push` lists
// (patterns with `*`, `**` and placeholders such as `{tenant}` and `{sub}`). A grant that includes
// a push asks for `push_lifetime_seconds`, so a long upload keeps a valid token.
import { ActionSet, Decision, RepoPattern, policy, withActions } from "./registry-policy.js";

function patterns(key, list) {
  if (!Array.isArray(list)) throw `${key}: expected a list of patterns`;
  return list.map((pattern, i) => {
    try {
      return RepoPattern.parse(pattern);
    } catch (error) {
      throw `${key}[${i}]: ${error.message}`;
    }
  });
}

export const { configure, evaluate } = policy({
  configure(settings) {
    for (const key of Object.keys(settings)) {
      if (!["pull", "push", "push_lifetime_seconds"].includes(key)) throw `unknown field \`${key}\``;
    }
    return {
      pull: patterns("pull", settings.pull),
      push: patterns("push", settings.push),
      pushLifetimeSeconds: settings.push_lifetime_seconds ?? null,
    };
  },

  evaluate(state, request) {
    const caller = request.caller;
    let pushes = false;
    const granted = [];
    for (const resource of request.resources) {
      if (resource.type !== "repository") continue;
      const allowed = [];
      if (state.pull.some((p) => p.matches(resource.name, caller))) allowed.push("pull");
      if (state.push.some((p) => p.matches(resource.name, caller))) allowed.push("push");
      const actions = ActionSet.parse(allowed).intersect(resource.actions);
      if (actions.includes("push")) pushes = true;
      if (actions.length > 0) granted.push(withActions(resource, actions));
    }
    const decision = Decision.annotate(Decision.grant(granted), "policy", "{{name}}");
    return pushes && state.pushLifetimeSeconds !== null
      ? Decision.withLifetime(decision, state.pushLifetimeSeconds)
      : decision;
  },
});
