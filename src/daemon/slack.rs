//! Slack slash commands, as pure functions: the request signature (`X-Slack-Signature`, `v0`, with the
//! request's timestamp within 5 minutes) and the command text (`deploy app@production v1.2`, …).
//! The HTTP edge is `POST /chatops/slack` in the API.

use super::model::Scope;
use super::signature;

/// How far a request's timestamp may be from now (Slack's own rule against replays).
pub const MAX_SKEW_SECONDS: u64 = 300;

/// Why a request is not Slack's.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsigned {
    Missing,
    Stale,
    Mismatch,
}

/// Checks `v0=HEX` = HMAC-SHA256(secret, `v0:{timestamp}:{body}`), and that the timestamp is within
/// [`MAX_SKEW_SECONDS`] of `now` (seconds since the epoch). Constant time.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), Unsigned> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else { return Err(Unsigned::Missing) };
    let seconds: u64 = timestamp.trim().parse().map_err(|_| Unsigned::Stale)?;
    if seconds.abs_diff(now) > MAX_SKEW_SECONDS {
        return Err(Unsigned::Stale);
    }
    let Some(hex) = signature.trim().strip_prefix("v0=") else { return Err(Unsigned::Mismatch) };
    let prefix = format!("v0:{}:", timestamp.trim());
    if signature::hmac_matches(secret, &[prefix.as_bytes(), body], hex) { Ok(()) } else { Err(Unsigned::Mismatch) }
}

/// The signature Slack would send (tests, and tools that replay commands).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!("v0={}", signature::hmac_hex(secret, &[format!("v0:{timestamp}:").as_bytes(), body]))
}

/// A command, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Deploy { service: String, destination: Option<String>, reference: Option<String> },
    Rollback { service: String, destination: Option<String>, version: String },
    Status { service: Option<String> },
    Cancel { id: i64 },
}

impl Command {
    /// The scope the command needs.
    pub fn needs(&self) -> Scope {
        match self {
            Command::Help | Command::Status { .. } => Scope::Read,
            Command::Deploy { .. } | Command::Rollback { .. } | Command::Cancel { .. } => Scope::Deploy,
        }
    }
}

/// What the commands are, for `help` and for mistakes.
pub fn usage(command: &str) -> String {
    let command = if command.is_empty() { "/berth" } else { command };
    format!(
        "*{command} deploy SERVICE[@DESTINATION] [REF]* — deploy the branch's head, or a branch, tag or commit\n\
         *{command} rollback SERVICE[@DESTINATION] VERSION* — back to a version still on the hosts\n\
         *{command} status [SERVICE]* — what runs on each host\n\
         *{command} cancel DEPLOY_ID* — stop a queued or running deploy\n\
         *{command} help* — this"
    )
}

/// Parses the text after the slash command; the error says what was wrong.
pub fn parse(text: &str) -> Result<Command, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [] | ["help"] => Ok(Command::Help),
        ["deploy", target] => {
            let (service, destination) = target_of(target)?;
            Ok(Command::Deploy { service, destination, reference: None })
        }
        ["deploy", target, reference] => {
            let (service, destination) = target_of(target)?;
            Ok(Command::Deploy { service, destination, reference: Some(word(reference)?) })
        }
        ["rollback", target, version] => {
            let (service, destination) = target_of(target)?;
            Ok(Command::Rollback { service, destination, version: word(version)? })
        }
        ["rollback", ..] => Err("`rollback` needs a service and a version: `rollback app v41`".to_string()),
        ["status"] => Ok(Command::Status { service: None }),
        ["status", service] => Ok(Command::Status { service: Some(name(service)?) }),
        ["cancel", id] => match id.trim_start_matches('#').parse() {
            Ok(id) => Ok(Command::Cancel { id }),
            Err(_) => Err(format!("`{id}` is not a deploy id: `cancel 42`")),
        },
        [verb, ..] if ["deploy", "status", "cancel", "help"].contains(verb) => {
            Err(format!("`{verb}` does not take those words"))
        }
        [verb, ..] => Err(format!("no command `{verb}`")),
    }
}

fn target_of(target: &str) -> Result<(String, Option<String>), String> {
    match target.split_once('@') {
        Some((service, destination)) => Ok((name(service)?, Some(name(destination)?))),
        None => Ok((name(target)?, None)),
    }
}

fn name(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 100 && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        Ok(text.to_string())
    } else {
        Err(format!("`{text}` is not a service or destination name"))
    }
}

fn word(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 200 && text.chars().all(|c| c.is_ascii_graphic()) {
        Ok(text.to_string())
    } else {
        Err(format!("`{text}` is not a version or git ref"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's worked example ("Verifying requests from Slack").
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_own_example_verifies_and_anything_else_does_not() {
        let at = 1_531_420_618;
        assert_eq!(sign(SECRET, "1531420618", BODY.as_bytes()), SIGNATURE);
        assert_eq!(verify(SECRET, Some("1531420618"), Some(SIGNATURE), BODY.as_bytes(), at), Ok(()));
        assert_eq!(verify(SECRET, Some("1531420618"), Some(SIGNATURE), BODY.as_bytes(), at + 299), Ok(()));
        assert_eq!(
            verify(SECRET, Some("1531420618"), Some(SIGNATURE), BODY.as_bytes(), at + 301),
            Err(Unsigned::Stale)
        );
        assert_eq!(
            verify(SECRET, Some("1531420618"), Some(SIGNATURE), BODY.as_bytes(), at - 301),
            Err(Unsigned::Stale)
        );
        let tampered = BODY.replace("text=", "text=deploy+app");
        assert_eq!(
            verify(SECRET, Some("1531420618"), Some(SIGNATURE), tampered.as_bytes(), at),
            Err(Unsigned::Mismatch)
        );
        // The same body replayed with a new timestamp but the old signature.
        assert_eq!(verify(SECRET, Some("1531420619"), Some(SIGNATURE), BODY.as_bytes(), at), Err(Unsigned::Mismatch));
        assert_eq!(verify(SECRET, None, Some(SIGNATURE), BODY.as_bytes(), at), Err(Unsigned::Missing));
        assert_eq!(verify(SECRET, Some("soon"), Some(SIGNATURE), BODY.as_bytes(), at), Err(Unsigned::Stale));
        assert_eq!(verify(SECRET, Some("1531420618"), Some("v1=00"), BODY.as_bytes(), at), Err(Unsigned::Mismatch));
    }

    #[test]
    fn commands_parse_with_their_targets() {
        assert_eq!(parse("").unwrap(), Command::Help);
        assert_eq!(
            parse(" deploy  app@production  v1.2 ").unwrap(),
            Command::Deploy {
                service: "app".into(),
                destination: Some("production".into()),
                reference: Some("v1.2".into())
            }
        );
        assert_eq!(
            parse("deploy app").unwrap(),
            Command::Deploy { service: "app".into(), destination: None, reference: None }
        );
        assert_eq!(
            parse("rollback app abc123").unwrap(),
            Command::Rollback { service: "app".into(), destination: None, version: "abc123".into() }
        );
        assert_eq!(parse("status").unwrap(), Command::Status { service: None });
        assert_eq!(parse("cancel #42").unwrap(), Command::Cancel { id: 42 });
        assert_eq!(parse("deploy app").unwrap().needs(), Scope::Deploy);
        assert_eq!(parse("status app").unwrap().needs(), Scope::Read);
        for (text, error) in [
            ("launch app", "no command `launch`"),
            ("rollback app", "needs a service and a version"),
            ("cancel soon", "is not a deploy id"),
            ("deploy a/b", "is not a service"),
            ("deploy app main extra", "does not take those words"),
        ] {
            assert!(parse(text).unwrap_err().contains(error), "{text}");
        }
    }
}
