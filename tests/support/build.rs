//! Builds the test guests from source for the runtime tests: the hostile guest against both
//! contract versions, the wrong-world guest, and the plan catalogue built against
//! `stellaops:registry-policy@0.1.0` (the older guest every host must keep loading).

#[path = "../../host/build_guests.rs"]
mod build_guests;

fn main() {
    build_guests::build(
        &[("hostile-guest", "HOSTILE_GUEST_V0_2_WASM"), ("wrong-world-guest", "WRONG_WORLD_GUEST_WASM")],
        &[
            ("hostile-guest", "contract-0-1", "HOSTILE_GUEST_WASM"),
            ("plan-catalogue", "contract-0-1", "PLAN_CATALOGUE_V0_1_WASM"),
        ],
        &["tests/guests", "policies/plan-catalogue"],
    );
}
