//! Option values every binary parses the same way.

/// Splits `key=value` items (librdkafka pass-through settings). The error
/// names the offending key only: values may be secrets.
pub fn key_values(items: &[String]) -> Result<Vec<(String, String)>, String> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!(
                "option {:?} is not key=value",
                item.split('=').next().unwrap_or_default()
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::key_values;

    #[test]
    fn splits_pairs_and_refuses_the_rest_without_echoing_values() {
        let ok =
            key_values(&["security.protocol = SSL".into(), "sasl.password=a=b".into()]).unwrap();
        assert_eq!(ok[0], ("security.protocol".into(), "SSL".into()));
        assert_eq!(ok[1], ("sasl.password".into(), "a=b".into()));
        let e = key_values(&["lonely".into()]).unwrap_err();
        assert!(e.contains("\"lonely\""));
        assert!(
            key_values(&["=secret".into()])
                .unwrap_err()
                .contains("\"\"")
        );
    }
}
