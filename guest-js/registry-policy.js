// registry-policy for JavaScript: the helpers of the Rust SDK (guest/) for policies built with
// componentize-qjs against stellaops:registry-policy@0.2.0.
//
// A policy module calls `policy({configure, evaluate})` and exports what it returns:
//
//     import { policy, RepoPattern, ActionSet, Decision } from "./registry-policy.js";
//
//     export const { configure, evaluate } = policy({
//       // Parsed settings in (a JSON document), your state out; throw to refuse the settings.
//       configure(settings) {
//         return { pull: ActionSet.parse(["pull"]), public: RepoPattern.parse(settings.public) };
//       },
//       // The state and one request in, a decision out.
//       evaluate(state, request) {
//         const granted = request.resources
//           .filter((r) => r.type === "repository" && state.public.matches(r.name, request.caller))
//           .map((r) => withActions(r, state.pull.intersect(r.actions)));
//         return Decision.grant(granted);
//       },
//     });
//
// The same rules as the Rust SDK, checked by the same table of cases (guest/tests/pattern-cases.json):
// a pattern is split on `/`; `*` matches within one segment; a whole `**` segment matches any
// depth (a trailing one needs at least one segment); `{sub}`, `{tenant}`, `{plan}` and
// `{client_id}` stand for the caller's value, matched literally, and match nothing when the value
// is missing or not a repository path component. An action set allows the listed actions; `*`
// allows any action, and a requested `*` only comes from a set that allows `*`.
//
// The host gives each request a fresh instance of the configured module: nothing one request does
// is seen by the next. There are no files, network or clock; `request.time` (Unix seconds, a
// Number here) is the request's time.

/** The placeholders a pattern may use, and the caller field each stands for: the one table. */
export const PLACEHOLDERS = Object.freeze({
  sub: (caller) => caller.subject,
  tenant: (caller) => caller.tenant,
  plan: (caller) => caller.plan,
  client_id: (caller) => caller.clientId,
});

/** Why a pattern was refused; the message is the Rust SDK's. */
export class PatternError extends Error {
  constructor(pattern, problem) {
    super(`repository pattern ${quote(pattern)}: ${problem}`);
    this.name = "PatternError";
  }
}

/** Why an action was refused; the message is the Rust SDK's. */
export class ActionError extends Error {
  constructor(action) {
    super(`action ${quote(action)} is not \`*\` or lowercase letters`);
    this.name = "ActionError";
  }
}

// Rust's `{:?}` of a string, which the shared error messages use.
function quote(text) {
  return JSON.stringify(text);
}

const ANY_DEPTH = Symbol("**");

/** A compiled repository-name pattern. */
export class RepoPattern {
  /** Compiles `pattern`; throws a PatternError naming the problem. */
  static parse(pattern) {
    if (typeof pattern !== "string" || pattern === "") {
      throw new PatternError(pattern, "is empty");
    }
    const segments = pattern.split("/").map((segment) => parseSegment(pattern, segment));
    return new RepoPattern(pattern, segments);
  }

  constructor(source, segments) {
    this.source = source;
    this.segments = segments;
  }

  toString() {
    return this.source;
  }

  /** Whether `name` matches, with placeholders taken from `caller`. */
  matches(name, caller) {
    if (name === "") return false;
    return matchSegments(this.segments, 0, name.split("/"), 0, caller);
  }
}

function parseSegment(pattern, segment) {
  if (segment === "") throw new PatternError(pattern, "has an empty path segment");
  if (segment === "**") return ANY_DEPTH;
  if (segment.includes("**")) {
    throw new PatternError(pattern, `\`**\` must be a whole path segment, not part of ${quote(segment)}`);
  }
  const tokens = [];
  let rest = segment;
  while (rest !== "") {
    if (rest.startsWith("*")) {
      tokens.push({ star: true });
      rest = rest.slice(1);
    } else if (rest.startsWith("{")) {
      const end = rest.indexOf("}");
      if (end < 0) throw new PatternError(pattern, `placeholder in ${quote(segment)} is not closed with \`}\``);
      const name = rest.slice(1, end);
      if (!Object.hasOwn(PLACEHOLDERS, name)) {
        const known = Object.keys(PLACEHOLDERS).map((p) => `{${p}}`).join(", ");
        throw new PatternError(pattern, `unknown placeholder {${name}}; known: ${known}`);
      }
      tokens.push({ placeholder: name });
      rest = rest.slice(end + 1);
    } else {
      let end = rest.search(/[*{]/);
      if (end < 0) end = rest.length;
      const literal = rest.slice(0, end);
      const bad = [...literal].find((c) => !/[a-zA-Z0-9._:-]/.test(c));
      if (bad !== undefined) throw new PatternError(pattern, `'${bad}' cannot occur in a repository name`);
      tokens.push({ literal });
      rest = rest.slice(end);
    }
  }
  return tokens;
}

/**
 * Whether `value` is one repository path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs
 * of `-`. Placeholder values must be, or they match nothing.
 */
export function isPathComponent(value) {
  return typeof value === "string" && /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/.test(value);
}

// Index-based, so a match allocates nothing (QuickJS pays for every array a slice would make).
function matchSegments(pattern, p, names, n, caller) {
  if (p === pattern.length) return n === names.length;
  const segment = pattern[p];
  if (segment === ANY_DEPTH) {
    // A trailing `**` needs at least one segment (`shared/**` is not `shared`); elsewhere it may
    // match none (`a/**/b` matches `a/b`).
    const min = p + 1 === pattern.length ? 1 : 0;
    for (let skip = n + min; skip <= names.length; skip++) {
      if (matchSegments(pattern, p + 1, names, skip, caller)) return true;
    }
    return false;
  }
  if (n === names.length) return false;
  return matchTokens(segment, 0, names[n], 0, caller) && matchSegments(pattern, p + 1, names, n + 1, caller);
}

function matchTokens(tokens, t, text, at, caller) {
  if (t === tokens.length) return at === text.length;
  const token = tokens[t];
  if (token.literal !== undefined) {
    return text.startsWith(token.literal, at) && matchTokens(tokens, t + 1, text, at + token.literal.length, caller);
  }
  if (token.placeholder !== undefined) {
    const value = PLACEHOLDERS[token.placeholder](caller);
    if (!isPathComponent(value)) return false;
    return text.startsWith(value, at) && matchTokens(tokens, t + 1, text, at + value.length, caller);
  }
  for (let i = at; i <= text.length; i++) {
    if (matchTokens(tokens, t + 1, text, i, caller)) return true;
  }
  return false;
}

/** The actions a rule allows. */
export class ActionSet {
  /** Builds a set from a rule's action list; throws an ActionError for an action outside the grammar. */
  static parse(actions) {
    const only = new Set();
    let any = false;
    for (const action of actions) {
      if (action === "*") any = true;
      else if (typeof action === "string" && /^[a-z]+$/.test(action)) only.add(action);
      else throw new ActionError(action);
    }
    return new ActionSet(any, only);
  }

  constructor(any, only) {
    this.any = any;
    this.only = only;
  }

  /** Whether the set allows `action` (a requested `*` only when the set allows `*`). */
  allows(action) {
    return this.any || (action !== "*" && this.only.has(action));
  }

  /** The requested actions this set allows, in the order asked. */
  intersect(requested) {
    return requested.filter((action) => this.allows(action));
  }
}

/** `resource` with other actions: what a policy grants for a request. */
export function withActions(resource, actions) {
  return { type: resource.type, name: resource.name, actions };
}

/** `repository:team/app:pull,push`. */
export function scopeString(resource) {
  return `${resource.type}:${resource.name}:${resource.actions.join(",")}`;
}

/** Decisions, in the shape the host expects. */
export const Decision = Object.freeze({
  /** Grant these resources (each a subset of what was requested). */
  grant(resources, { note = null, lifetimeSeconds = null, annotations = [] } = {}) {
    return { tag: "grant", val: { resources, note, lifetimeSeconds, annotations: [...annotations] } };
  },
  /** Refuse the whole exchange: `reason` is kebab-case, `message` is shown to the caller. */
  deny(reason, message, { annotations = [] } = {}) {
    return { tag: "deny", val: { reason, message, annotations: [...annotations] } };
  },
  /** The same decision with one more annotation for the audit trail (at most 8 per decision). */
  annotate(decision, key, value) {
    decision.val.annotations.push({ key, value: String(value) });
    return decision;
  },
  /** The same grant asking for a token lifetime of `seconds` (the host clamps it). */
  withLifetime(decision, seconds) {
    if (decision.tag === "grant") decision.val.lifetimeSeconds = seconds;
    return decision;
  },
});

/** Parses a settings document; the error names what is wrong. */
export function parseSettings(text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw `the settings are not JSON: ${error.message}`;
  }
}

/** Every claim of the caller's Authority token; throws if the host sent something unreadable. */
export function claims(caller) {
  const value = JSON.parse(caller.claimsJson);
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error("the caller's claims are not a JSON object");
  }
  return value;
}

/**
 * The component's two exports from a policy's `configure(settings) -> state` and
 * `evaluate(state, request) -> decision`. Settings arrive parsed; what `configure` throws refuses
 * them (the operator sees its message); the state is snapshotted by the host after `configure`.
 */
export function policy({ configure, evaluate }) {
  let state;
  let configured = false;
  return {
    configure(text) {
      try {
        state = configure(parseSettings(text));
      } catch (error) {
        throw typeof error === "string" ? error : String(error && error.message ? error.message : error);
      }
      configured = true;
    },
    evaluate(request) {
      if (!configured) throw new Error("evaluate was called before configure");
      // u64 arrives as a BigInt; policies compare it with ordinary numbers.
      request.time = Number(request.time);
      return evaluate(state, request);
    },
  };
}
