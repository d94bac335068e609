//! Builds the default policy (`policies/plan-catalogue`) for wasm32-wasip2 so the binary can embed
//! it: `registry-token` runs with no separate `.wasm`, and no `.wasm` is ever committed.

#[path = "build_guests.rs"]
mod build_guests;

fn main() {
    build_guests::build(&[("plan-catalogue", "PLAN_CATALOGUE_WASM")], &[], &["policies/plan-catalogue"]);
}
