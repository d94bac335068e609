// The shared table of pattern and action cases, which the Rust SDK's tests run too
// (guest/tests/pattern_cases.rs): both SDKs give the same answers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { ActionSet, RepoPattern, isPathComponent } from "../registry-policy.js";

const cases = JSON.parse(readFileSync(new URL("../../guest/tests/pattern-cases.json", import.meta.url)));

function caller(value) {
  return { subject: value.sub, tenant: value.tenant ?? null, plan: value.plan ?? null, clientId: value.client_id ?? null };
}

test("patterns match as the shared table says", () => {
  const fallback = caller(cases.caller);
  for (const c of cases.matches) {
    const who = c.caller ? caller(c.caller) : fallback;
    assert.equal(RepoPattern.parse(c.pattern).matches(c.name, who), c.matches, JSON.stringify(c));
  }
  assert.ok(cases.matches.length >= 30);
});

test("invalid patterns are refused with the shared reason", () => {
  for (const c of cases.invalid) {
    assert.throws(() => RepoPattern.parse(c.pattern), (error) => error.message.includes(c.error), JSON.stringify(c));
  }
});

test("path components follow the shared table", () => {
  for (const good of cases.path_components.valid) assert.ok(isPathComponent(good), good);
  for (const bad of cases.path_components.invalid) assert.ok(!isPathComponent(bad), bad);
});

test("action sets follow the shared table", () => {
  for (const c of cases.actions) {
    if (c.error) {
      assert.throws(() => ActionSet.parse(c.allowed), (error) => error.message.includes(c.error), JSON.stringify(c));
    } else {
      assert.deepEqual(ActionSet.parse(c.allowed).intersect(c.requested), c.granted, JSON.stringify(c));
    }
  }
});
