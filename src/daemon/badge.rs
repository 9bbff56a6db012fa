//! The status badge of a service (`GET /badges/{service}.svg`): its last deploy's state and version, as a
//! flat SVG in the shields.io style, for READMEs and dashboards.

use super::model::DeployState;

/// The SVG for a service whose last deploy is `last` (state, version), or none yet.
pub fn svg(service: &str, last: Option<(DeployState, Option<&str>)>) -> String {
    let label = service;
    let (message, color) = match last {
        None => ("no deploys".to_string(), "#9f9f9f"),
        Some((state, version)) => {
            let color = match state {
                DeployState::Succeeded => "#4c1",
                DeployState::Running | DeployState::Queued => "#007ec6",
                DeployState::Failed | DeployState::TimedOut | DeployState::Interrupted => "#e05d44",
                DeployState::Cancelled | DeployState::Superseded => "#fe7d37",
            };
            let message = match version {
                Some(version) => format!("{} {}", state.name(), shorten(version)),
                None => state.name().to_string(),
            };
            (message, color)
        }
    };
    // Verdana 11px averages about 7 px per character; 10 px of padding on each side of each half.
    let width = |text: &str| text.chars().count() * 7 + 10;
    let (left, right) = (width(label), width(&message));
    let total = left + right;
    let (label, message) = (escape(label), escape(&message));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{label}: {message}"><title>{label}: {message}</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{left}" height="20" fill="#555"/><rect x="{left}" width="{right}" height="20" fill="{color}"/><rect width="{total}" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">{label}</text><text x="{rx}" y="14">{message}</text></g></svg>"##,
        lx = left / 2,
        rx = left + right / 2,
    )
}

/// Commit-long versions are cut to 12 characters, as people quote them.
fn shorten(version: &str) -> &str {
    if version.len() == 40 && version.chars().all(|c| c.is_ascii_hexdigit()) { &version[..12] } else { version }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_badge_says_state_and_version_in_its_colour() {
        let badge = svg("app", Some((DeployState::Succeeded, Some("0123456789abcdef0123456789abcdef01234567"))));
        assert!(badge.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(badge.contains("<title>app: succeeded 0123456789ab</title>") && badge.contains("#4c1"), "{badge}");
        assert!(svg("app", Some((DeployState::Failed, None))).contains("#e05d44"));
        assert!(svg("app", None).contains("no deploys"));
        let hostile = svg("a<b", Some((DeployState::Running, Some("v\"1&<x>"))));
        assert!(hostile.contains("a&lt;b: running v&quot;1&amp;&lt;x&gt;") && !hostile.contains("<x>"), "{hostile}");
    }
}
