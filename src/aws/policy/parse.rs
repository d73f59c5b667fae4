//! Reading documents as IAM returns them (plain or URL-encoded JSON) and finding keys repeated
//! within one object, which `serde_json::Value` would silently collapse.

use std::{cell::RefCell, collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{PolicyError, describe};

/// Parses a document as IAM returns it: URL-encoded (e.g. `%7B%22Version%22...`) or plain JSON.
///
/// Text that is valid JSON is taken as it is, so a plain document containing `%` is never
/// decoded. Otherwise it is percent-decoded once (RFC 3986: `+` stays a `+`). The document must
/// be a JSON object.
pub(crate) fn parse_document(text: &str) -> Result<Value, PolicyError> {
    let plain_error = match serde_json::from_str::<Value>(text) {
        Ok(value) => return require_object(value),
        Err(e) => e,
    };
    let looks_like_json = text.trim_start().starts_with(['{', '[']);
    if looks_like_json || !text.contains('%') {
        return Err(not_json(text, &plain_error));
    }
    let decoded = percent_decode(text)?;
    let value = serde_json::from_str::<Value>(&decoded).map_err(|e| PolicyError::NotJson {
        detail: format!("after URL-decoding: {e}"),
    })?;
    require_object(value)
}

/// A document as read from IAM (URL-encoded). One that does not parse becomes `Value::Null`,
/// which compares unequal to anything desired, so the plan rewrites it.
pub(crate) fn parse_observed(text: &str) -> Value {
    parse_document(text).unwrap_or(Value::Null)
}

fn require_object(value: Value) -> Result<Value, PolicyError> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(PolicyError::NotAnObject {
            found: describe(&value),
        })
    }
}

/// The error for text that is not JSON; empty text is named as such rather than as an EOF.
pub(super) fn not_json(text: &str, error: &serde_json::Error) -> PolicyError {
    let detail = if text.trim().is_empty() {
        "the text is empty".to_string()
    } else {
        error.to_string()
    };
    PolicyError::NotJson { detail }
}

/// Strict percent-decoding: a `%` must start a `%XX` escape and the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, PolicyError> {
    let bytes = text.as_bytes();
    for (offset, _) in text.match_indices('%') {
        let escape = bytes.get(offset + 1..offset + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(PolicyError::BadUrlEncoding {
                detail: format!("\"%\" at byte {offset} is not followed by two hexadecimal digits"),
            });
        }
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| PolicyError::BadUrlEncoding {
            detail: "the decoded bytes are not UTF-8".to_string(),
        })
}

/// Finds keys that occur twice in one object, which `serde_json::Value` would silently collapse.
pub(super) fn check_unique_keys(text: &str) -> Result<(), PolicyError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match (UniqueKeys {
        duplicate: &duplicate,
    })
    .deserialize(&mut deserializer)
    {
        Ok(()) => Ok(()),
        Err(e) => match duplicate.into_inner() {
            Some(key) => Err(PolicyError::DuplicateKey {
                key,
                line: e.line(),
                column: e.column(),
            }),
            None => Err(not_json(text, &e)),
        },
    }
}

/// Walks a JSON text recording the first key repeated within one object.
#[derive(Clone, Copy)]
struct UniqueKeys<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                *self.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom("duplicate key"));
            }
            seen.insert(key);
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::aws::policy::{
        equivalent,
        testing::{PLAIN_TRUST, Rng, identity_document, reshape, scrambled_text},
    };

    // ----- parse_document -----

    /// A trust policy as GetRole returns it: compact JSON, percent-encoded.
    const ENCODED_TRUST: &str = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22AWS%22%3A%22arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fci-deployer%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%2C%22Condition%22%3A%7B%22StringEquals%22%3A%7B%22sts%3AExternalId%22%3A%22tenant%20a%2Bb%22%7D%7D%7D%5D%7D";

    #[test]
    fn url_encoded_document_parses_like_plain_json() {
        let encoded = parse_document(ENCODED_TRUST).unwrap();
        let plain = parse_document(PLAIN_TRUST).unwrap();
        assert_eq!(encoded, plain);
        assert!(equivalent(&encoded, &plain));
        // '+' is literal in IAM's encoding, %20 is the space.
        assert_eq!(
            encoded["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
            json!("tenant a+b")
        );
    }

    #[test]
    fn url_encoded_document_with_encoded_whitespace() {
        let encoded = "%7B%0A%20%20%22Version%22%3A%20%222012-10-17%22%2C%0A%20%20%22Statement%22%3A%20%7B%22Effect%22%3A%20%22Allow%22%2C%20%22Action%22%3A%20%22s3%3AGetObject%22%2C%20%22Resource%22%3A%20%22arn%3Aaws%3As3%3A%3A%3Ab%2F%2A%22%7D%0A%7D";
        let doc = parse_document(encoded).unwrap();
        assert_eq!(
            doc,
            json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}})
        );
    }

    #[test]
    fn plain_json_with_percent_is_not_decoded() {
        let text = r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/100%25"}]}"#;
        let doc = parse_document(text).unwrap();
        assert_eq!(
            doc["Statement"][0]["Resource"],
            json!("arn:aws:s3:::b/100%25")
        );
    }

    #[test]
    fn parse_document_errors() {
        assert!(matches!(
            parse_document("not json"),
            Err(PolicyError::NotJson { .. })
        ));
        assert_eq!(
            parse_document("   "),
            Err(PolicyError::NotJson {
                detail: "the text is empty".to_string()
            })
        );
        // Malformed plain JSON is reported as JSON even when it contains '%'.
        assert!(matches!(
            parse_document(r#"{"a": "50%"#),
            Err(PolicyError::NotJson { .. })
        ));
        let bad_escape = parse_document("%7B%2").unwrap_err();
        assert!(
            matches!(bad_escape, PolicyError::BadUrlEncoding { .. }),
            "{bad_escape}"
        );
        assert!(bad_escape.to_string().contains("byte 3"), "{bad_escape}");
        let not_utf8 = parse_document("%7B%FF%7D").unwrap_err();
        assert!(
            matches!(not_utf8, PolicyError::BadUrlEncoding { .. }),
            "{not_utf8}"
        );
        let decoded_not_json = parse_document("%7B%22a%22").unwrap_err();
        assert!(
            decoded_not_json.to_string().contains("after URL-decoding"),
            "{decoded_not_json}"
        );
        assert_eq!(
            parse_document("%5B%5D"),
            Err(PolicyError::NotAnObject {
                found: "an array".to_string()
            })
        );
    }

    #[test]
    fn observed_documents_that_do_not_parse_become_null() {
        assert_eq!(
            parse_observed(ENCODED_TRUST),
            parse_document(PLAIN_TRUST).unwrap()
        );
        assert_eq!(
            parse_observed(PLAIN_TRUST),
            parse_document(PLAIN_TRUST).unwrap()
        );
        let desired = parse_document(PLAIN_TRUST).unwrap();
        for text in [
            "",
            "not json",
            "%7B%2",
            "%7B%FF%7D",
            "%7B%22a%22",
            "%5B%5D",
            "[]",
            "null",
        ] {
            let observed = parse_observed(text);
            assert_eq!(observed, Value::Null, "{text:?}");
            assert!(!equivalent(&observed, &desired), "{text:?}");
        }
    }

    /// The position reported is the closing quote of the repeated key.
    #[test]
    fn repeated_keys_are_found_at_any_depth() {
        assert_eq!(
            check_unique_keys(r#"{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}"#),
            Ok(())
        );
        assert_eq!(
            check_unique_keys("{\"a\": [1, {\"k\": true,\n \"k\": null}]}"),
            Err(PolicyError::DuplicateKey {
                key: "k".to_string(),
                line: 2,
                column: 4
            })
        );
        assert_eq!(
            check_unique_keys(r#"{"x": 1, "x": 1}"#),
            Err(PolicyError::DuplicateKey {
                key: "x".to_string(),
                line: 1,
                column: 12
            })
        );
        assert!(matches!(
            check_unique_keys("{\"a\": "),
            Err(PolicyError::NotJson { .. })
        ));
    }

    proptest! {
        #[test]
        fn percent_encoded_documents_parse_the_same(doc in identity_document(), seed in any::<u64>()) {
            let text = scrambled_text(&reshape(&doc, &mut Rng(seed)), &mut Rng(seed ^ 1));
            let encoded = percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC).to_string();
            prop_assert!(encoded.starts_with("%7B"));
            let decoded = parse_document(&encoded).unwrap();
            prop_assert_eq!(&decoded, &parse_document(&text).unwrap());
            prop_assert!(equivalent(&doc, &decoded));
        }
    }
}
