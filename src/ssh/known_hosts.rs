//! OpenSSH `known_hosts` files: which key a host should present, and recording a new one (trust on first use).
//!
//! Written here rather than using `russh::keys::known_hosts` because berth needs what that module does not give:
//! every file's `file:line` for messages, `@revoked` honoured, wildcard and negated patterns, tab-separated
//! fields, and lines it cannot parse (an unknown key type, a typo) skipped instead of failing the whole check.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use russh::keys::{Algorithm, HashAlg, PublicKey};

use super::error::SshError;

/// What the known_hosts files say about the key a host presented.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// A line for this host has exactly this key.
    Trusted,
    /// No line names this host.
    Unknown,
    /// Lines name this host, none with this key: `expected` is the recorded key (of the same type when there is
    /// one), at `file:line`.
    Changed { expected: PublicKey, file: PathBuf, line: usize },
    /// The key is marked `@revoked`.
    Revoked { file: PathBuf, line: usize },
}

/// The name a host has in known_hosts: `host` on port 22, `[host]:port` otherwise (as OpenSSH writes it).
pub(crate) fn entry_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 { host } else { format!("[{host}]:{port}") }
}

/// One usable line of a known_hosts file.
struct Entry {
    line: usize,
    marker: Marker,
    patterns: String,
    key: PublicKey,
}

#[derive(PartialEq)]
enum Marker {
    None,
    Revoked,
    /// `@cert-authority`: berth does not accept host certificates, so these lines never vouch for a key.
    CertAuthority,
}

fn parse_line(number: usize, text: &str) -> Option<Entry> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let mut fields = text.split_ascii_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        other if other.starts_with('@') => return None, // a marker this version of the format does not know
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = fields.next()?;
    }
    let key_type = fields.next()?;
    let key_base64 = fields.next()?;
    // A line with a key type this build cannot parse cannot vouch for (or against) any key: skipped.
    let key = PublicKey::from_openssh(&format!("{key_type} {key_base64}")).ok()?;
    Some(Entry { line: number, marker, patterns: first.to_string(), key })
}

fn read_entries(path: &Path) -> Result<Vec<Entry>, SshError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SshError::KnownHosts { action: "read", path: path.to_path_buf(), cause: e.to_string() }),
    };
    Ok(text.lines().enumerate().filter_map(|(i, line)| parse_line(i + 1, line)).collect())
}

/// Whether the comma-separated `patterns` of a line name `name`: some pattern (plain with `*`/`?` wildcards, or
/// hashed `|1|salt|hmac`) matches and no negated pattern (`!pattern`) does.
pub(crate) fn patterns_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(&negated.to_ascii_lowercase(), name) {
                return false;
            }
        } else if pattern.starts_with("|1|") {
            matched |= hashed_match(pattern, name);
        } else {
            matched |= wildcard_match(&pattern.to_ascii_lowercase(), name);
        }
    }
    matched
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`, OpenSSH's `HashKnownHosts` form.
fn hashed_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.trim_start_matches("|1|").splitn(2, '|');
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else { return false };
    let (Ok(salt), Ok(hash)) = (BASE64.decode(salt), BASE64.decode(hash)) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

/// Glob matching with `*` (any run) and `?` (one character), as OpenSSH's `match_pattern`.
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched_to)) = backtrack {
            pi = star + 1;
            ti = matched_to + 1;
            backtrack = Some((star, matched_to + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// What `files` say about host `name` (see [`entry_name`]) presenting `key`.
pub(crate) fn check(files: &[PathBuf], name: &str, key: &PublicKey) -> Result<Verdict, SshError> {
    let mut other_key: Option<(PublicKey, PathBuf, usize)> = None;
    let mut same_type_key: Option<(PublicKey, PathBuf, usize)> = None;
    let mut trusted = false;
    for file in files {
        for entry in read_entries(file)? {
            if !patterns_match(&entry.patterns, name) {
                continue;
            }
            let same_key = entry.key.key_data() == key.key_data();
            match entry.marker {
                Marker::Revoked if same_key => return Ok(Verdict::Revoked { file: file.clone(), line: entry.line }),
                Marker::Revoked | Marker::CertAuthority => {}
                Marker::None if same_key => trusted = true,
                Marker::None => {
                    let slot =
                        if entry.key.algorithm() == key.algorithm() { &mut same_type_key } else { &mut other_key };
                    slot.get_or_insert((entry.key, file.clone(), entry.line));
                }
            }
        }
    }
    if trusted {
        return Ok(Verdict::Trusted);
    }
    // OpenSSH refuses a key of another type too when the host has recorded keys: a man in the middle could
    // otherwise present a type the client has not recorded yet and be "new".
    Ok(match same_type_key.or(other_key) {
        Some((expected, file, line)) => Verdict::Changed { expected, file, line },
        None => Verdict::Unknown,
    })
}

/// The key algorithms recorded for host `name`, in file order (used to ask the server for one of those first,
/// as OpenSSH does, so a host with several keys presents the one we know).
pub(crate) fn recorded_algorithms(files: &[PathBuf], name: &str) -> Vec<Algorithm> {
    let mut algorithms = Vec::new();
    for file in files {
        for entry in read_entries(file).unwrap_or_default() {
            if entry.marker == Marker::None
                && patterns_match(&entry.patterns, name)
                && !algorithms.contains(&entry.key.algorithm())
            {
                algorithms.push(entry.key.algorithm());
            }
        }
    }
    algorithms
}

/// Appends `name keytype base64` to `file` (creating it and its directory), in one write so concurrent
/// recordings do not interleave.
pub(crate) fn record(file: &Path, name: &str, key: &PublicKey) -> Result<(), SshError> {
    let fail = |action: &'static str, cause: String| SshError::KnownHosts { action, path: file.to_path_buf(), cause };
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e.to_string()))?;
    }
    let mut handle = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .open(file)
        .map_err(|e| fail("open", e.to_string()))?;
    let mut needs_newline = false;
    if handle.seek(SeekFrom::End(-1)).is_ok() {
        let mut last = [0u8; 1];
        handle.read_exact(&mut last).map_err(|e| fail("read", e.to_string()))?;
        needs_newline = last[0] != b'\n';
    }
    let openssh = key.to_openssh().map_err(|e| fail("encode a key for", e.to_string()))?;
    // The key's comment (if any) is dropped: only `type base64`.
    let key_text: Vec<&str> = openssh.split_ascii_whitespace().take(2).collect();
    let line = format!("{}{name} {}\n", if needs_newline { "\n" } else { "" }, key_text.join(" "));
    handle.write_all(line.as_bytes()).map_err(|e| fail("write", e.to_string()))
}

/// `SHA256:…`, as `ssh-keygen -l` prints it.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    fn file_with(lines: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, lines).unwrap();
        (dir, path)
    }

    /// `|1|salt|hash` for `name`, as `ssh-keygen -H` writes it.
    fn hashed(name: &str) -> String {
        let salt = [7u8; 20];
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        let tag = ring::hmac::sign(&key, name.as_bytes());
        format!("|1|{}|{}", BASE64.encode(salt), BASE64.encode(tag.as_ref()))
    }

    #[test]
    fn plain_bracketed_comma_listed_and_hashed_names_are_recognised() {
        let text = format!(
            "# comment\n\nweb1,10.0.0.1 {KEY_A}\n[10.0.0.2]:2222\t{KEY_A} comment here\n{} {KEY_B}\n",
            hashed("db.example.com")
        );
        let (_dir, path) = file_with(&text);
        let files = [path];
        assert_eq!(check(&files, "web1", &key(KEY_A)).unwrap(), Verdict::Trusted);
        assert_eq!(check(&files, "10.0.0.1", &key(KEY_A)).unwrap(), Verdict::Trusted);
        assert_eq!(check(&files, &entry_name("10.0.0.2", 2222), &key(KEY_A)).unwrap(), Verdict::Trusted);
        assert_eq!(check(&files, "10.0.0.2", &key(KEY_A)).unwrap(), Verdict::Unknown, "port 22 is another entry");
        assert_eq!(check(&files, "db.example.com", &key(KEY_B)).unwrap(), Verdict::Trusted);
        assert_eq!(check(&files, "other", &key(KEY_A)).unwrap(), Verdict::Unknown);
    }

    #[test]
    fn a_different_key_is_changed_with_its_line_and_revoked_keys_are_refused() {
        let (_dir, path) = file_with(&format!("garbage line\nweb1 {KEY_A}\n@revoked * {KEY_B}\n"));
        let files = [path.clone()];
        assert_eq!(
            check(&files, "web1", &key(KEY_B)).unwrap(),
            Verdict::Revoked { file: path.clone(), line: 3 },
            "a revoked key is refused even where another key is recorded"
        );
        let (_dir2, path2) = file_with(&format!("web1 {KEY_A}\n"));
        assert_eq!(
            check(std::slice::from_ref(&path2), "web1", &key(KEY_B)).unwrap(),
            Verdict::Changed { expected: key(KEY_A), file: path2, line: 1 }
        );
    }

    #[test]
    fn wildcards_and_negation() {
        assert!(patterns_match("*.example.com,!bad.example.com", "web.example.com"));
        assert!(!patterns_match("*.example.com,!bad.example.com", "bad.example.com"));
        assert!(patterns_match("10.0.0.?", "10.0.0.7"));
        assert!(!patterns_match("10.0.0.?", "10.0.0.17"));
        assert!(patterns_match("WEB1", "web1"), "host names are case-insensitive");
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn recording_appends_a_line_that_is_then_trusted() {
        let (_dir, path) = file_with(&format!("web1 {KEY_A}")); // no final newline
        record(&path, "[10.0.0.9]:2222", &key(KEY_B)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("web1 {KEY_A}\n[10.0.0.9]:2222 {KEY_B}\n"));
        assert_eq!(check(&[path], "[10.0.0.9]:2222", &key(KEY_B)).unwrap(), Verdict::Trusted);
    }

    #[test]
    fn a_missing_file_knows_nothing_and_recording_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        assert_eq!(check(std::slice::from_ref(&path), "web1", &key(KEY_A)).unwrap(), Verdict::Unknown);
        record(&path, "web1", &key(KEY_A)).unwrap();
        assert_eq!(check(&[path], "web1", &key(KEY_A)).unwrap(), Verdict::Trusted);
    }
}
