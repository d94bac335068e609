//! The Docker scope grammar: any input either parses into resources that print back to what
//! parses again identically, or is refused; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_token::scope::{parse_one, parse_scopes};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('&').collect();
    if let Ok(resources) = parse_scopes(values) {
        for resource in resources {
            let again = parse_one(&resource.to_string()).expect("a parsed scope prints as a valid scope");
            assert_eq!(again, resource);
        }
    }
});
