//! `application/x-www-form-urlencoded` bodies — the dashboard's forms, Slack's slash commands, GitHub's
//! form-encoded deliveries — and the percent-encoding of URL parts.

/// A form body (`application/x-www-form-urlencoded`) as its fields, in order.
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        let text = String::from_utf8_lossy(body);
        Form(
            text.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(name), percent_decode(value))
                })
                .collect(),
        )
    }

    /// The field's value, trimmed; an empty field counts as absent (an optional input left blank).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.trim()).filter(|value| !value.is_empty())
    }

    /// The field as an owned value, if given.
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }
}

/// `+` is a space and `%XX` a byte; invalid escapes are kept as they are, invalid UTF-8 replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|digit| digit as u8)
}

/// Percent-encodes everything but RFC 3986's unreserved characters: a path segment or a query value.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_decoded() {
        let form = Form::parse(b"service=app&version=v%201&reason=a+b%2Bc&empty=&odd=%zz%4&csrf=x&flag");
        assert_eq!(form.get("service"), Some("app"));
        assert_eq!(form.get("version"), Some("v 1"));
        assert_eq!(form.get("reason"), Some("a b+c"));
        assert_eq!(form.get("empty"), None);
        assert_eq!(form.get("odd"), Some("%zz%4"));
        assert_eq!(form.get("missing"), None);
        assert_eq!(Form::parse("n=%C3%A9%FF".as_bytes()).get("n"), Some("é\u{fffd}"));
        assert_eq!(url_encode("a b/<é>"), "a%20b%2F%3C%C3%A9%3E");
    }
}
