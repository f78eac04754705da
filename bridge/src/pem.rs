//! PEM (RFC 7468) through `pem-rfc7468`, for the key files operators hand to `ferrohsm`
//! (a KEK's public key, the domain holders' keys).
//!
//! [`decode`] reads one block: explanatory text before it is allowed, nothing after it, no
//! headers (`Proc-Type: 4,ENCRYPTED` and the like), base64 lines of one width. The width is
//! the one liberty taken with the crate's strict grammar (64 columns): RFC 7468 §3 lets
//! parsers take other widths, tools write 76 columns (MIME) or a single line, and the crate
//! checks lines of any one width when told it, so [`decode`] tells it the width of the
//! block's first line. [`encode`] writes 64 columns and LF line endings, as OpenSSL does.

use zeroize::Zeroizing;

pub use pem_rfc7468::Error;

/// The narrowest base64 line the decoder accepts (one block of four characters).
const MIN_WIDTH: usize = 4;

/// `der` as a PEM document labelled `label`.
pub fn encode(label: &str, der: &[u8]) -> Result<String, Error> {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der)
}

/// The label and the contents of the PEM document `text`.
pub fn decode(text: &str) -> Result<(&str, Zeroizing<Vec<u8>>), Error> {
    let width = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .nth(1)
        .map_or(0, str::len);
    let mut decoder = pem_rfc7468::Decoder::new_wrapped(text.as_bytes(), width.max(MIN_WIDTH))?;
    let label = decoder.type_label();
    let mut der = Zeroizing::new(Vec::new());
    decoder.decode_to_end(&mut der)?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(body: &str, width: usize) -> String {
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(width)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn round_trip_and_line_widths() {
        let der: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let text = encode("PUBLIC KEY", &der).unwrap();
        assert!(text.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(text.ends_with("\n-----END PUBLIC KEY-----\n"));
        assert!(text.lines().skip(1).take(6).all(|l| l.len() == 64));
        let (label, back) = decode(&text).unwrap();
        assert_eq!((label, &back[..]), ("PUBLIC KEY", &der[..]));
        // 76 columns, one line, CRLF, explanatory text before the block.
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        for other in [
            wrapped(&body, 76),
            wrapped(&body, body.len()),
            wrapped(&body, 64).replace('\n', "\r\n"),
            format!("Public key of KEK1\n{}", wrapped(&body, 64)),
        ] {
            assert_eq!(&decode(&other).unwrap().1[..], &der[..], "{other}");
        }
    }

    /// What the hand-written readers accepted (they took the first block labelled as asked,
    /// anywhere in the text, and any whitespace inside it) and this does not.
    #[test]
    fn malformed_pem_is_refused() {
        let der = [7u8; 200];
        let text = encode("PUBLIC KEY", &der).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let ragged = text.replacen('\n', "\n ", 2);
        let headers = text.replacen('\n', "\nProc-Type: 4,ENCRYPTED\n\n", 1);
        let two = format!("{text}{text}");
        let after = format!("{text}and then some\n");
        let mismatched = text.replace("END PUBLIC KEY", "END PRIVATE KEY");
        let uneven = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &body[..40],
            &body[40..]
        );
        let not_base64 = text.replacen("Bwc", "B*c", 1);
        for bad in [ragged, headers, two, after, mismatched, uneven, not_base64] {
            assert!(decode(&bad).is_err(), "{bad}");
        }
        assert!(decode("").is_err());
        assert!(decode("-----BEGIN PUBLIC KEY-----\n").is_err());
    }
}
