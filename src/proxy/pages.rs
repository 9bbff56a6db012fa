//! The HTML pages the proxy answers with itself: errors (404, 413, 502, 503, 504) and the maintenance page.
//!
//! A service can bring its own `NNN.html` files (`--error-pages DIR`); `{{ .Message }}` (kamal-proxy's
//! template syntax) or `{{message}}` in a 503 page is replaced by the `stop --message` text.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use http::StatusCode;

/// A service's custom pages, read once at deploy time.
#[derive(Debug, Default)]
pub struct Pages {
    custom: HashMap<u16, String>,
}

impl Pages {
    /// Reads `NNN.html` files from `dir`; unreadable files are reported and the built-in page is used.
    pub fn load(dir: Option<&str>) -> (Pages, Vec<String>) {
        let mut pages = Pages::default();
        let mut problems = Vec::new();
        let Some(dir) = dir else { return (pages, problems) };
        for code in [404u16, 413, 502, 503, 504] {
            let path = Path::new(dir).join(format!("{code}.html"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    pages.custom.insert(code, text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
            }
        }
        (pages, problems)
    }

    /// The page for `status`, with `message` (maintenance text) filled in.
    pub fn render(&self, status: StatusCode, message: Option<&str>) -> Bytes {
        let message = message.unwrap_or("");
        if let Some(template) = self.custom.get(&status.as_u16()) {
            let escaped = escape_html(message);
            return Bytes::from(template.replace("{{ .Message }}", &escaped).replace("{{message}}", &escaped));
        }
        builtin(status, message)
    }
}

/// The built-in page for `status`.
pub fn builtin(status: StatusCode, message: &str) -> Bytes {
    let (title, text) = match status.as_u16() {
        404 => ("Not Found", "The page you were looking for doesn't exist."),
        413 => ("Request Too Large", "The request was larger than this service accepts."),
        502 => ("Bad Gateway", "The service is not answering right now."),
        503 => ("Service Unavailable", "The service is temporarily unavailable."),
        504 => ("Gateway Timeout", "The service took too long to answer."),
        _ => ("Error", "The request could not be handled."),
    };
    let detail = if message.is_empty() { text.to_string() } else { escape_html(message) };
    Bytes::from(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{detail}</p></body></html>\n"
    ))
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_message_is_escaped_into_the_page() {
        let page = Pages::default().render(StatusCode::SERVICE_UNAVAILABLE, Some("Back <soon>"));
        let text = String::from_utf8(page.to_vec()).unwrap();
        assert!(text.contains("Back &lt;soon&gt;"), "{text}");
    }
}
