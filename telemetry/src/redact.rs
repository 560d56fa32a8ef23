//! Keeping secrets out of logs: [`url`] blanks the password (and credential-carrying query
//! parameters) of a URL before it is logged, [`hide`] registers a secret (a Bearer token, a
//! webhook secret) that must never be written, and [`scrub`] applies both to a finished log line,
//! so even a third-party error message that embeds a URL or a token cannot leak one.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a blanked secret is replaced with.
pub const MASK: &str = "***";

/// Secrets registered with [`hide`], longest first (so a secret containing another is blanked
/// whole).
static SECRETS: RwLock<Vec<Box<str>>> = RwLock::new(Vec::new());

/// Registers a secret that no log line may contain: every occurrence is written as `***`.
/// Empty strings are ignored; registering the same secret twice is harmless.
pub fn hide(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if secrets.iter().any(|s| &**s == secret) {
        return;
    }
    secrets.push(secret.into());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Query parameter names whose values are credentials (matched case-insensitively as substrings).
const SENSITIVE_QUERY: [&str; 9] = [
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "key",
    "sig",
    "auth",
    "credential",
];

fn sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE_QUERY.iter().any(|s| name.contains(s))
}

/// `raw` as it may be logged: its password (`postgres://user:***@host/db`) and the values of query
/// parameters that carry credentials (`?api_key=***`) blanked. A URL with nothing to blank comes
/// back unchanged (not re-serialised); a string that does not parse as a URL gets the same
/// `scheme://user:password@` blanking as any log line.
pub fn url(raw: &str) -> Cow<'_, str> {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return userinfo_passwords(raw);
    };
    let mut changed = false;
    if parsed.password().is_some() && parsed.set_password(Some(MASK)).is_ok() {
        changed = true;
    }
    if parsed.query_pairs().any(|(k, _)| sensitive(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if sensitive(&k) {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        Cow::Owned(parsed.into())
    } else {
        Cow::Borrowed(raw)
    }
}

/// A finished log line with every registered secret ([`hide`]) and every password inside a
/// `scheme://user:password@host` URL blanked.
pub fn scrub(line: &str) -> Cow<'_, str> {
    let mut out = userinfo_passwords(line);
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for secret in secrets.iter() {
        if out.contains(&**secret) {
            out = Cow::Owned(out.replace(&**secret, MASK));
        }
    }
    out
}

/// Blanks the password of every `scheme://user:password@host` in free text. The authority ends at
/// the first `/ ? #`, quote, backslash, whitespace or control character (none of which a valid
/// URL's userinfo holds unencoded), so the scan never runs past the URL into the rest of a JSON
/// line.
fn userinfo_passwords(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '\\' | '<' | '>')
                    || c.is_whitespace()
                    || c.is_control()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_blanked_and_the_user_kept() {
        assert_eq!(
            url("postgres://billing:s3cr%40t@db.internal:5432/tollgate?sslmode=require"),
            "postgres://billing:***@db.internal:5432/tollgate?sslmode=require"
        );
        assert_eq!(
            url("https://user:pw@example.com/x"),
            "https://user:***@example.com/x"
        );
    }

    #[test]
    fn url_without_secrets_comes_back_unchanged() {
        for raw in [
            "http://127.0.0.1:8888",
            "postgres://billing@db/tollgate",
            "unix:/run/tollgate/agent.sock",
            "https://us.api.konghq.com/v3/openmeter/events?x=1",
        ] {
            assert!(matches!(url(raw), Cow::Borrowed(_)), "{raw}");
        }
    }

    #[test]
    fn credential_query_parameters_are_blanked() {
        assert_eq!(
            url("https://hooks.example.com/in?api_key=abc&team=7&Signature=zz"),
            "https://hooks.example.com/in?api_key=***&team=7&Signature=***"
        );
    }

    #[test]
    fn unparseable_urls_still_lose_their_password() {
        assert_eq!(url("not a url: ftp://u:pw@h"), "not a url: ftp://u:***@h");
    }

    #[test]
    fn scrub_blanks_urls_inside_json_lines_without_breaking_them() {
        let line = r#"{"message":"delivery failed","error":"error sending request for url (http://agent:hunter2@10.0.0.1:8888/api/v1/events)","url":"http://10.0.0.1","x":"a:b@c"}"#;
        let out = scrub(line);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("http://agent:***@10.0.0.1:8888/api/v1/events"));
        assert!(out.contains(r#""x":"a:b@c""#), "{out}");
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(parsed["url"], "http://10.0.0.1");
    }

    #[test]
    fn hidden_secrets_are_blanked_longest_first() {
        hide("tok_abc");
        hide("tok_abcdef");
        hide("");
        assert_eq!(
            scrub("a tok_abcdef b tok_abc c"),
            "a *** b *** c",
            "the longer secret is blanked whole"
        );
        assert!(matches!(scrub("nothing to see"), Cow::Borrowed(_)));
    }
}
