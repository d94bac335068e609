//! PEM for private keys, with every buffer that holds key material zeroized when dropped.
//!
//! The `pem` crate (used for certificates) copies the base64 text into buffers of its own that are
//! freed without being cleared; for a private key that would leave copies of it in freed memory.
//! Pre-sized `Zeroizing` buffers never reallocate, so no copy escapes.

use data_encoding::BASE64;
use zeroize::Zeroizing;

/// One PEM block: its label (`PRIVATE KEY`, ...) and the DER it holds.
pub struct Block {
    pub label: String,
    pub der: Zeroizing<Vec<u8>>,
}

/// Every block of a PEM document, in order. Text outside blocks is ignored (as OpenSSL does);
/// RFC 1421 headers (a legacy encrypted key) are refused.
pub fn decode(text: &[u8]) -> Result<Vec<Block>, &'static str> {
    let text = std::str::from_utf8(text).map_err(|_| "not PEM (not UTF-8)")?;
    let mut blocks = Vec::new();
    let mut open: Option<(String, Zeroizing<String>)> = None;
    for line in text.lines().map(str::trim) {
        let framed = |prefix: &str| line.strip_prefix(prefix).and_then(|l| l.strip_suffix("-----"));
        match open.take() {
            None => {
                if let Some(label) = framed("-----BEGIN ") {
                    open = Some((label.to_owned(), Zeroizing::new(String::with_capacity(text.len()))));
                }
            }
            Some((label, body)) => {
                if let Some(end) = framed("-----END ") {
                    if end != label {
                        return Err("a PEM block ends with another label than it began with");
                    }
                    let mut der = Zeroizing::new(vec![0u8; BASE64.decode_len(body.len()).map_err(|_| BAD)?]);
                    let length = BASE64.decode_mut(body.as_bytes(), &mut der).map_err(|_| BAD)?;
                    der.truncate(length);
                    blocks.push(Block { label, der });
                } else if line.contains(':') {
                    return Err(
                        "an encrypted PEM key (Proc-Type headers) is not supported; decrypt it first",
                    );
                } else {
                    let mut body = body;
                    body.push_str(line);
                    open = Some((label, body));
                }
            }
        }
    }
    match (open, blocks.is_empty()) {
        (Some(_), _) => Err("a PEM block has no END line"),
        (None, true) => Err("not PEM (no BEGIN line)"),
        (None, false) => Ok(blocks),
    }
}

const BAD: &str = "a PEM block is not valid base64";

/// `der` as a PEM block labelled `label`, 64 columns, in a zeroized buffer.
pub fn encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let base64 = Zeroizing::new(BASE64.encode(der));
    let mut pem = Zeroizing::new(String::with_capacity(base64.len() * 65 / 64 + 2 * label.len() + 40));
    pem.push_str("-----BEGIN ");
    pem.push_str(label);
    pem.push_str("-----\n");
    for line in base64.as_bytes().chunks(64) {
        // base64 is ASCII, so every chunk of it is one character per byte.
        line.iter().for_each(|&byte| pem.push(char::from(byte)));
        pem.push('\n');
    }
    pem.push_str("-----END ");
    pem.push_str(label);
    pem.push_str("-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_agrees_with_the_pem_crate() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1217).collect();
        let ours = encode("PRIVATE KEY", &der);
        assert_eq!(
            ours.as_str(),
            pem::encode(&pem::Pem::new("PRIVATE KEY", der.clone())).replace("\r\n", "\n")
        );
        let with_noise = format!(
            "explanatory text\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            ours.as_str()
        );
        let blocks = decode(with_noise.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "EC PARAMETERS");
        assert_eq!(blocks[1].label, "PRIVATE KEY");
        assert_eq!(*blocks[1].der, der);
        // CRLF line ends and other wrapping widths are fine.
        let wrapped: String = BASE64
            .encode(&der)
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect();
        let crlf = format!("-----BEGIN PRIVATE KEY-----\r\n{wrapped}-----END PRIVATE KEY-----\r\n");
        assert_eq!(*decode(crlf.as_bytes()).unwrap()[0].der, der);
    }

    #[test]
    fn malformed_pem_is_refused() {
        for (text, problem) in [
            ("nothing here", "no BEGIN"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n", "no END"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "another label"),
            ("-----BEGIN PRIVATE KEY-----\nA!AA\n-----END PRIVATE KEY-----\n", "base64"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                "encrypted",
            ),
        ] {
            let error = decode(text.as_bytes()).err().unwrap();
            assert!(error.contains(problem), "{text:?}: {error}");
        }
    }
}
