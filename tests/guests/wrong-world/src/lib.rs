//! A component for a different world than `stellaops:registry-policy/policy@0.1.0`.

wit_bindgen::generate!({ world: "policy", path: "wit" });

struct WrongWorld;

impl Guest for WrongWorld {
    fn evaluate(name: String) -> bool {
        !name.is_empty()
    }
}

export!(WrongWorld);
