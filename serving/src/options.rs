//! Option values every binary parses the same way.

pub use headroom_options::{assert_every_option_has_env, clap_defaults, options_without_env};

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

/// `url` with its password (and any `password=` query value) replaced by
/// `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

/// `key=value` items shown by key only, for logs: values may be secrets.
pub fn redact_key_values(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|item| format!("{}=***", item.split('=').next().unwrap_or_default().trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{key_values, redact_key_values, redact_url};

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://me:hunter2@db:5432/h?sslmode=require"),
            "postgres://me:***@db:5432/h?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/h?user=me&password=hunter2&sslmode=require"),
            "postgres://db/h?user=me&password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://me@db/h"), "postgres://me@db/h");
        assert_eq!(
            redact_key_values(&["sasl.password=hunter2".into()]),
            ["sasl.password=***"]
        );
    }

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
