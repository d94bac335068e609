// The plan catalogue in JavaScript: the same rules as policies/plan-catalogue (Rust), the same
// settings, and the same cases (policies/plan-catalogue/cases.yaml) pass through both.
//
//     componentize-qjs --sync --wit wit/registry-policy@0.2.0 --js policies/plan-catalogue-js/policy.js \
//       --module-root . -o plan_catalogue_js.wasm
import { ActionSet, Decision, RepoPattern, policy, scopeString, withActions } from "../../guest-js/registry-policy.js";

const RULE_KEYS = new Set(["type", "repositories", "actions", "lifetime_seconds"]);
const SETTINGS_KEYS = new Set(["plans", "revoked_licenses", "license_expiry"]);

function compileRule(name, rule) {
  if (rule === null || typeof rule !== "object" || Array.isArray(rule)) throw `${name}: a rule is an object`;
  for (const key of Object.keys(rule)) {
    if (!RULE_KEYS.has(key)) throw `${name}: unknown field \`${key}\``;
  }
  const type = rule.type ?? "repository";
  if (typeof type !== "string" || !/^[a-z0-9]+$/.test(type)) {
    throw `${name}: type ${JSON.stringify(type)} is not lowercase letters and digits`;
  }
  if (!Array.isArray(rule.repositories)) throw `${name}.repositories: expected a list`;
  if (!Array.isArray(rule.actions)) throw `${name}.actions: expected a list`;
  for (const [field, list] of [["repositories", rule.repositories], ["actions", rule.actions]]) {
    list.forEach((item, i) => {
      if (typeof item !== "string") throw `${name}.${field}[${i}]: ${JSON.stringify(item)} is not a string`;
    });
  }
  if (rule.repositories.length === 0) throw `${name}: repositories is empty`;
  if (rule.actions.length === 0) throw `${name}: actions is empty`;
  const lifetime = rule.lifetime_seconds ?? null;
  if (lifetime !== null && !(Number.isInteger(lifetime) && lifetime >= 1 && lifetime <= 4294967295)) {
    throw `${name}: lifetime_seconds must be at least 1`;
  }
  try {
    return {
      name,
      type,
      repositories: rule.repositories.map((p) => RepoPattern.parse(p)),
      actions: ActionSet.parse(rule.actions),
      lifetime,
    };
  } catch (error) {
    throw `${name}: ${error.message}`;
  }
}

function configure(settings) {
  if (settings === null || typeof settings !== "object" || Array.isArray(settings)) throw "the settings are an object";
  for (const key of Object.keys(settings)) {
    if (!SETTINGS_KEYS.has(key)) throw `unknown field \`${key}\``;
  }
  if (settings.plans === undefined) throw "missing field `plans`";
  // The types the Rust policy's serde checks: JavaScript would take a string for a list (a set of
  // its characters) or a list for a map (keyed "0", "1", …) and revoke or expire nothing.
  const plans = new Map();
  for (const [plan, rules] of Object.entries(mapOf("plans", settings.plans))) {
    if (!Array.isArray(rules)) throw `plans.${plan}: expected a list of rules`;
    plans.set(plan, rules.map((rule, i) => compileRule(`plans.${plan}[${i}]`, rule)));
  }
  const revoked = settings.revoked_licenses === undefined ? [] : settings.revoked_licenses;
  if (!Array.isArray(revoked)) throw `revoked_licenses: expected a list of licences, not ${JSON.stringify(revoked)}`;
  revoked.forEach((license, i) => {
    if (typeof license !== "string") throw `revoked_licenses[${i}]: ${JSON.stringify(license)} is not a string`;
  });
  const expiry = new Map();
  const expiring = settings.license_expiry === undefined ? {} : mapOf("license_expiry", settings.license_expiry);
  for (const [license, date] of Object.entries(expiring)) {
    if (typeof date !== "string") throw `license_expiry.${license}: ${JSON.stringify(date)} is not a string`;
    const seconds = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?[Zz]$/.test(date) ? Date.parse(date) / 1000 : NaN;
    if (!Number.isFinite(seconds)) {
      throw `license_expiry.${license}: ${JSON.stringify(date)} is not an RFC 3339 UTC time (2026-12-31T00:00:00Z)`;
    }
    expiry.set(license, { seconds: Math.floor(seconds), date });
  }
  return { plans, revoked: new Set(revoked), expiry };
}

/** `value` if it is a map (a JSON object); throws naming `field` otherwise. */
function mapOf(field, value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw `${field}: expected a map, not ${JSON.stringify(value)}`;
  }
  return value;
}

function nothingGranted(request, why) {
  if (request.resources.length === 0) return Decision.grant([]);
  const asked = request.resources.map(scopeString).join(" ");
  return Decision.grant([], { note: `${why}; nothing granted of: ${asked}` });
}

function evaluate(state, request) {
  const caller = request.caller;
  const plan = caller.plan ?? "";
  const license = caller.license;
  if (license !== null && license !== undefined) {
    if (state.revoked.has(license)) {
      const message = `licence ${license} has been revoked; no registry access is issued for it`;
      return Decision.annotate(Decision.deny("licence-revoked", message), "plan", plan);
    }
    const expiry = state.expiry.get(license);
    if (expiry && request.time >= expiry.seconds) {
      const message = `licence ${license} expired at ${expiry.date}; no registry access is issued for it`;
      const denial = Decision.annotate(Decision.deny("licence-expired", message), "plan", plan);
      return Decision.annotate(denial, "licence-expired-at", expiry.date);
    }
  }
  if (caller.plan === null || caller.plan === undefined) {
    return nothingGranted(request, "the caller has no stellaops:plan claim");
  }
  const rules = state.plans.get(caller.plan);
  if (rules === undefined) {
    const decision = nothingGranted(request, `plan ${JSON.stringify(caller.plan)} is not in the catalogue`);
    return Decision.annotate(decision, "plan", plan);
  }

  const granted = [];
  const short = [];
  // The lifetime every granted resource allows (the smallest) and the rule that set it; null once a
  // resource is granted by rules without one; undefined before any grant.
  let lifetime;
  // Plain loops: in QuickJS every closure and intermediate array costs a few microseconds.
  for (const resource of request.resources) {
    const matching = [];
    for (const rule of rules) {
      if (rule.type !== resource.type) continue;
      for (const pattern of rule.repositories) {
        if (pattern.matches(resource.name, caller)) {
          matching.push(rule);
          break;
        }
      }
    }
    const actions = [];
    for (const action of resource.actions) {
      for (const rule of matching) {
        if (rule.actions.allows(action)) {
          actions.push(action);
          break;
        }
      }
    }
    if (actions.length < resource.actions.length) short.push(scopeString(resource));
    if (actions.length === 0) continue;
    // The longest lifetime among the rules that granted this resource's actions.
    let longest = null;
    for (const rule of matching) {
      if (rule.lifetime === null || (longest !== null && rule.lifetime <= longest.seconds)) continue;
      if (actions.some((a) => rule.actions.allows(a))) longest = { seconds: rule.lifetime, rule: rule.name };
    }
    if (lifetime === undefined) lifetime = longest;
    else if (lifetime !== null && longest !== null) lifetime = longest.seconds < lifetime.seconds ? longest : lifetime;
    else lifetime = null;
    granted.push(withActions(resource, actions));
  }

  const note = short.length === 0 ? null : `plan ${JSON.stringify(plan)} does not allow all of: ${short.join(" ")}`;
  let decision = Decision.annotate(Decision.grant(granted, { note }), "plan", plan);
  if (lifetime) {
    decision = Decision.annotate(Decision.withLifetime(decision, lifetime.seconds), "lifetime-rule", lifetime.rule);
  }
  return decision;
}

export const { configure: configurePolicy, evaluate: evaluatePolicy } = policy({ configure, evaluate });
export { configurePolicy as configure, evaluatePolicy as evaluate };
