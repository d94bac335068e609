//! The metadata [`export_policy!`](crate::export_policy) embeds in the component: one custom
//! section, `registry-policy-metadata`, holding a JSON object that `registry-token policy inspect`
//! prints. Built at compile time from the policy crate's Cargo metadata, so the fields are what
//! `Cargo.toml` says and cost nothing at run time.

/// The custom section's name.
pub const SECTION: &str = "registry-policy-metadata";

/// The fields of the section; strings as Cargo gives them.
#[derive(Clone, Copy, Debug)]
pub struct Metadata<'a> {
    /// `CARGO_PKG_NAME`.
    pub name: &'a str,
    /// `CARGO_PKG_VERSION`.
    pub version: &'a str,
    /// `CARGO_PKG_DESCRIPTION`.
    pub description: &'a str,
    /// `CARGO_PKG_AUTHORS`: names separated by `:`.
    pub authors: &'a str,
    /// The WIT package the component implements (`stellaops:registry-policy@0.2.0`).
    pub wit: &'a str,
    /// The SDK that built it (`registry-policy 0.1.0`).
    pub sdk: &'a str,
    /// A JSON schema of the settings, as text; empty for none.
    pub settings_schema: &'a str,
}

impl Metadata<'_> {
    /// The length of [`Metadata::encode`]'s output.
    pub const fn encoded_len(&self) -> usize {
        self.write(&mut [])
    }

    /// The JSON object, as bytes: `{"name":…,"version":…,"description":…,"authors":[…],"wit":…,
    /// "sdk":…,"settings_schema":…}` (`settings_schema` only when there is one, as a string).
    pub const fn encode<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        self.write(&mut out);
        out
    }

    /// Writes into `out` as far as it reaches and returns the full length.
    const fn write(&self, out: &mut [u8]) -> usize {
        let mut at = raw(out, 0, b"{\"name\":");
        at = string(out, at, self.name.as_bytes());
        at = raw(out, at, b",\"version\":");
        at = string(out, at, self.version.as_bytes());
        at = raw(out, at, b",\"description\":");
        at = string(out, at, self.description.as_bytes());
        at = raw(out, at, b",\"authors\":[");
        // Cargo joins authors with `:`; each becomes one string of the array.
        let authors = self.authors.as_bytes();
        let (mut start, mut i, mut first) = (0, 0, true);
        while i <= authors.len() {
            if i == authors.len() || authors[i] == b':' {
                if i > start {
                    if !first {
                        at = raw(out, at, b",");
                    }
                    at = string(out, at, slice(authors, start, i));
                    first = false;
                }
                start = i + 1;
            }
            i += 1;
        }
        at = raw(out, at, b"],\"wit\":");
        at = string(out, at, self.wit.as_bytes());
        at = raw(out, at, b",\"sdk\":");
        at = string(out, at, self.sdk.as_bytes());
        if !self.settings_schema.is_empty() {
            at = raw(out, at, b",\"settings_schema\":");
            at = string(out, at, self.settings_schema.as_bytes());
        }
        raw(out, at, b"}")
    }
}

const fn slice(bytes: &[u8], start: usize, end: usize) -> &[u8] {
    bytes.split_at(end).0.split_at(start).1
}

const fn put(out: &mut [u8], at: usize, byte: u8) -> usize {
    if at < out.len() {
        out[at] = byte;
    }
    at + 1
}

const fn raw(out: &mut [u8], mut at: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        at = put(out, at, bytes[i]);
        i += 1;
    }
    at
}

/// A JSON string: quotes, backslashes and control characters escaped; other bytes (UTF-8
/// included) as they are.
const fn string(out: &mut [u8], mut at: usize, bytes: &[u8]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    at = put(out, at, b'"');
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'"' || byte == b'\\' {
            at = put(out, at, b'\\');
            at = put(out, at, byte);
        } else if byte < 0x20 {
            at = raw(out, at, b"\\u00");
            at = put(out, at, HEX[(byte >> 4) as usize]);
            at = put(out, at, HEX[(byte & 0xf) as usize]);
        } else {
            at = put(out, at, byte);
        }
        i += 1;
    }
    put(out, at, b'"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_json_with_every_field() {
        const META: Metadata = Metadata {
            name: "my-policy",
            version: "1.2.3",
            description: "says \"no\"\nmostly \\ always",
            authors: "Ann <ann@example.com>:Bob",
            wit: "stellaops:registry-policy@0.2.0",
            sdk: "registry-policy 0.1.0",
            settings_schema: r#"{"type": "object"}"#,
        };
        const LEN: usize = META.encoded_len();
        static BYTES: [u8; LEN] = META.encode::<LEN>();
        let json: serde_json::Value = serde_json::from_slice(&BYTES).unwrap();
        assert_eq!(json["name"], "my-policy");
        assert_eq!(json["description"], "says \"no\"\nmostly \\ always");
        assert_eq!(json["authors"], serde_json::json!(["Ann <ann@example.com>", "Bob"]));
        assert_eq!(json["wit"], "stellaops:registry-policy@0.2.0");
        assert_eq!(json["settings_schema"], r#"{"type": "object"}"#);

        let bare = Metadata { authors: "", settings_schema: "", ..META };
        let json: serde_json::Value = serde_json::from_slice(&bare.encode::<{ bare_len() }>()).unwrap();
        assert_eq!(json["authors"], serde_json::json!([]));
        assert!(json.get("settings_schema").is_none());
    }

    const fn bare_len() -> usize {
        Metadata {
            name: "my-policy",
            version: "1.2.3",
            description: "says \"no\"\nmostly \\ always",
            authors: "",
            wit: "stellaops:registry-policy@0.2.0",
            sdk: "registry-policy 0.1.0",
            settings_schema: "",
        }
        .encoded_len()
    }
}
