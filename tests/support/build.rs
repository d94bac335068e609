//! Builds the test guests (hostile and wrong-world) from source for the runtime tests.

#[path = "../../host/build_guests.rs"]
mod build_guests;

fn main() {
    build_guests::build(
        &[("hostile-guest", "HOSTILE_GUEST_WASM"), ("wrong-world-guest", "WRONG_WORLD_GUEST_WASM")],
        &["tests/guests"],
    );
}
