//! The dotenv dialect of secrets files: dotenv 3's `Dotenv::Parser`, with Kamal's own `$(...)` substitution.
//!
//! dotenv finds assignments with one multi-line regular expression scanned over the whole file, so that quoted
//! values can span lines and anything that is not an assignment is silently skipped (a secrets file may be half a
//! shell script and still load). [`find_assignment`] reproduces that expression's backtracking order by hand, so a
//! file means the same thing to berth as to Kamal, including the odd cases (an unclosed quote, `KEY:` followed by a
//! newline, a lone word on a line defining an empty key).
//!
//! Per value: surrounding quotes are removed; in double quotes `\n`/`\r` are handled as dotenv 3 does (kept literal
//! unless `DOTENV_LINEBREAK_MODE=legacy`); backslashes are unescaped except before `$`; then, unless single-quoted,
//! `$VAR`/`${VAR}` are replaced (earlier keys of the same file first, then the environment, else empty) and
//! `$(command)` runs (variables in it expanded again, `kamal secrets …`/`berth secrets …` in-process, anything else
//! through `/bin/sh`, output chomped).

use std::process::Stdio;

use indexmap::IndexMap;

use super::SecretsError;
use super::ruby::{self, is_regex_space};
use crate::environment::Environment;

/// How commands in a file run: in the environment of the load, with their stderr shown unless a test hushes it.
pub(super) struct ParseContext<'a> {
    pub env: &'a Environment,
    /// The file as the user named it, for error messages.
    pub file: &'a str,
    /// Tests hush the commands' stderr and give them no stdin.
    pub quiet_stderr: bool,
}

/// Every assignment in `text`, in file order, with later assignments to a key replacing earlier ones in place.
pub(super) fn parse(text: &str, context: &ParseContext<'_>) -> Result<IndexMap<String, String>, SecretsError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // dotenv turns CRLF and lone CR into LF before scanning.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let bytes = text.as_bytes();
    let mut hash: IndexMap<String, String> = IndexMap::new();
    let mut position = 0;
    while let Some(assignment) = find_assignment(bytes, position) {
        position = assignment.end;
        let key = &text[assignment.key.0..assignment.key.1];
        let line = 1 + bytes[..assignment.key.0].iter().filter(|&&b| b == b'\n').count();
        match assignment.value {
            None if assignment.export => {
                // `export KEY` with no value only re-exports a key set earlier in the same file.
                if !hash.contains_key(key) {
                    return Err(SecretsError::UnsetExport {
                        file: context.file.to_string(),
                        line,
                        key: key.to_string(),
                    });
                }
            }
            value => {
                let raw = value.map_or("", |(start, end)| &text[start..end]);
                let parsed = parse_value(raw, &hash, context).map_err(|source| SecretsError::InFile {
                    file: context.file.to_string(),
                    line,
                    source: Box::new(source),
                })?;
                hash.insert(key.to_string(), parsed);
            }
        }
    }
    Ok(hash)
}

/// One match of dotenv's `LINE` expression: byte ranges into the scanned text.
#[derive(Debug, PartialEq, Eq)]
struct Assignment {
    end: usize,
    export: bool,
    key: (usize, usize),
    value: Option<(usize, usize)>,
}

/// The first match of dotenv's `LINE` at or after `from`, as Ruby's `String#scan` would find it.
///
/// The expression, for reference (dotenv 3, `lib/dotenv/parser.rb`):
/// `(?:^|\A)\s*(?<export>export\s+)?(?<key>[\w.]+)`
/// `(?:(?:\s*=\s*?|:\s+?)(?<value>\s*'(?:\\'|[^'])*'|\s*"(?:\\"|[^"])*"|[^\#\n]+)?)?`
/// `\s*(?:\#.*)?(?:$|\z)`
fn find_assignment(s: &[u8], from: usize) -> Option<Assignment> {
    (from..=s.len()).filter(|&p| p == 0 || s[p - 1] == b'\n').find_map(|p| match_at(s, p))
}

fn whitespace_end(s: &[u8], from: usize) -> usize {
    from + s[from.min(s.len())..].iter().take_while(|&&b| is_regex_space(b)).count()
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'.'
}

fn match_at(s: &[u8], line_start: usize) -> Option<Assignment> {
    // `\s*` can only end where a key or `export` begins, so only its longest run matters; the same holds for the
    // whitespace after `export`.
    let start = whitespace_end(s, line_start);
    if s[start..].starts_with(b"export")
        && s.get(start + 6).is_some_and(|&b| is_regex_space(b))
        && let Some(found) = match_key(s, whitespace_end(s, start + 6), true)
    {
        return Some(found);
    }
    match_key(s, start, false)
}

fn match_key(s: &[u8], key_start: usize, export: bool) -> Option<Assignment> {
    let key_end = key_start + s[key_start..].iter().take_while(|&&b| is_key_byte(b)).count();
    if key_end == key_start {
        return None;
    }
    let found =
        |value: Option<(usize, usize)>, end: usize| Assignment { end, export, key: (key_start, key_end), value };
    // Separator `\s*=\s*?`: the lazy `\s*?` is tried shortest first, and the shortest always succeeds because the
    // value alternatives take their own leading whitespace (and an empty value ends at the newline).
    let before_equals = whitespace_end(s, key_end);
    if s.get(before_equals) == Some(&b'=')
        && let Some((value, end)) = match_value(s, before_equals + 1)
    {
        return Some(found(value, end));
    }
    // Separator `:\s+?`: at least one whitespace byte, which may be the newline (the value is then the next line).
    if s.get(key_end) == Some(&b':') && s.get(key_end + 1).is_some_and(|&b| is_regex_space(b)) {
        for value_start in key_end + 2..=whitespace_end(s, key_end + 1) {
            if let Some((value, end)) = match_value(s, value_start) {
                return Some(found(value, end));
            }
        }
    }
    // No separator: a bare key.
    tail(s, key_end).map(|end| found(None, end))
}

/// The value alternatives in order (single-quoted, double-quoted, unquoted, none), each followed by the tail.
fn match_value(s: &[u8], from: usize) -> Option<(Option<(usize, usize)>, usize)> {
    for quote in [b'\'', b'"'] {
        let quote_start = whitespace_end(s, from);
        if s.get(quote_start) == Some(&quote) {
            for close in closing_quotes(s, quote_start + 1, quote) {
                if let Some(end) = tail(s, close + 1) {
                    return Some((Some((from, close + 1)), end));
                }
            }
        }
    }
    let unquoted_end = from + s[from..].iter().take_while(|&&b| b != b'#' && b != b'\n').count();
    if unquoted_end > from
        && let Some(end) = tail(s, unquoted_end)
    {
        return Some((Some((from, unquoted_end)), end));
    }
    tail(s, from).map(|end| (None, end))
}

/// Where `(?:\\Q|[^Q])*Q` can close a quoted value opened just before `content_start`, in backtracking order: first
/// the first quote not taken as part of an escaped `\Q`, then each escaped quote, latest first.
fn closing_quotes(s: &[u8], content_start: usize, quote: u8) -> Vec<usize> {
    let mut escaped_quotes = Vec::new();
    let mut i = content_start;
    while i < s.len() {
        if s[i] == b'\\' && s.get(i + 1) == Some(&quote) {
            escaped_quotes.push(i + 1);
            i += 2;
        } else if s[i] == quote {
            break;
        } else {
            i += 1;
        }
    }
    let mut closes = Vec::with_capacity(escaped_quotes.len() + 1);
    if i < s.len() {
        closes.push(i);
    }
    closes.extend(escaped_quotes.into_iter().rev());
    closes
}

/// `\s*(?:\#.*)?(?:$|\z)` from `from`: where the match ends, if it can.
fn tail(s: &[u8], from: usize) -> Option<usize> {
    (from..=whitespace_end(s, from)).rev().find_map(|at| {
        if s.get(at) == Some(&b'#') {
            Some(at + s[at..].iter().take_while(|&&b| b != b'\n').count())
        } else if at == s.len() || s[at] == b'\n' {
            Some(at)
        } else {
            None
        }
    })
}

/// dotenv's `parse_value`, with Kamal's command substitution in place of dotenv's.
fn parse_value(raw: &str, hash: &IndexMap<String, String>, context: &ParseContext<'_>) -> Result<String, SecretsError> {
    let stripped = ruby::strip(raw);
    let bytes = stripped.as_bytes();
    let quote = match bytes {
        [first @ (b'\'' | b'"'), .., last] if first == last => Some(*first),
        _ => None,
    };
    let inner = if quote.is_some() { &stripped[1..stripped.len() - 1] } else { stripped };
    let value = match quote {
        Some(b'\'') => return Ok(inner.to_string()),
        Some(_) => unescape_characters(&expand_newlines(inner, hash, context.env)),
        None => unescape_characters(inner),
    };
    let value = substitute_variables(&value, hash, context.env);
    substitute_commands(&value, hash, context)
}

/// dotenv 3 keeps `\n` and `\r` in double quotes as written (its replacement doubles the backslash, which the
/// unescape step then halves); `DOTENV_LINEBREAK_MODE=legacy`, in the file or the environment, turns them into
/// real line breaks as dotenv 2 did.
fn expand_newlines(value: &str, hash: &IndexMap<String, String>, env: &Environment) -> String {
    let mode = hash.get("DOTENV_LINEBREAK_MODE").map(String::as_str).or_else(|| env.get("DOTENV_LINEBREAK_MODE"));
    if mode == Some("legacy") {
        value.replace("\\n", "\n").replace("\\r", "\r")
    } else {
        value.replace("\\n", "\\\\n").replace("\\r", "\\\\r")
    }
}

/// `gsub(/\\([^$])/, '\1')`: a backslash disappears before anything but `$`, which it keeps escaping.
fn unescape_characters(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut unescaped = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1).is_some_and(|&next| next != b'$') {
            unescaped.push(bytes[i + 1]);
            i += 2;
        } else {
            unescaped.push(bytes[i]);
            i += 1;
        }
    }
    // Only an ASCII backslash was removed, so the bytes are still UTF-8.
    String::from_utf8(unescaped).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// dotenv's `Substitutions::Variable`: `(\\)?(\$)(?!\()\{?([A-Z0-9_]+)?\}?` (case-insensitive). An escaped `\$X`
/// loses its backslash; `$X`, `${X}` (and the lopsided `${X`, `$X}`) become the earlier key or environment variable
/// `X`, or nothing; a `$` with no name stays.
pub(super) fn substitute_variables(value: &str, hash: &IndexMap<String, String>, env: &Environment) -> String {
    let s = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut copied_to = 0;
    let mut i = 0;
    while i < s.len() {
        let escaped = s[i] == b'\\' && s.get(i + 1) == Some(&b'$');
        let dollar = if escaped { i + 1 } else { i };
        if s[dollar] != b'$' || s.get(dollar + 1) == Some(&b'(') {
            i += 1;
            continue;
        }
        let mut end = dollar + 1;
        if s.get(end) == Some(&b'{') {
            end += 1;
        }
        let name_start = end;
        end += s[end..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
        let name = &value[name_start..end];
        if s.get(end) == Some(&b'}') {
            end += 1;
        }
        out.push_str(&value[copied_to..i]);
        if escaped {
            out.push_str(&value[dollar..end]);
        } else if name.is_empty() {
            out.push_str(&value[i..end]);
        } else {
            out.push_str(hash.get(name).map(String::as_str).or_else(|| env.get(name)).unwrap_or(""));
        }
        copied_to = end;
        i = end;
    }
    out.push_str(&value[copied_to..]);
    out
}

/// The end of a `(…)` command body starting at `open` (Kamal's `\((?:\\.|[^()\\]|\g<cmd>)+\)`): escaped characters
/// and balanced parentheses inside are part of it.
fn command_end(s: &[u8], open: usize, depth: usize) -> Option<usize> {
    if s.get(open) != Some(&b'(') || depth > 256 {
        return None;
    }
    let mut i = open + 1;
    loop {
        match *s.get(i)? {
            b')' if i > open + 1 => return Some(i + 1),
            b')' => return None,
            b'(' => i = command_end(s, i, depth + 1)?,
            // `.` in Ruby does not match a newline, so a backslash before one ends the command unmatched.
            b'\\' => match s.get(i + 1) {
                Some(&next) if next != b'\n' => i += 2,
                _ => return None,
            },
            _ => i += 1,
        }
    }
}

/// Kamal's `InlineCommandSubstitution`: `\$(…)` stays as `$(…)`; `$(…)` is replaced by the command's output.
fn substitute_commands(
    value: &str,
    hash: &IndexMap<String, String>,
    context: &ParseContext<'_>,
) -> Result<String, SecretsError> {
    let s = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut copied_to = 0;
    let mut i = 0;
    while i < s.len() {
        let escaped = s[i] == b'\\' && s.get(i + 1) == Some(&b'$');
        let dollar = if escaped { i + 1 } else { i };
        let end = match (s[dollar], command_end(s, dollar + 1, 0)) {
            (b'$', Some(end)) => end,
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&value[copied_to..i]);
        if escaped {
            out.push_str(&value[dollar..end]);
        } else {
            let command = substitute_variables(&value[dollar + 2..end - 1], hash, context.env);
            out.push_str(&run_command(&command, context)?);
        }
        copied_to = end;
        i = end;
    }
    out.push_str(&value[copied_to..]);
    Ok(out)
}

/// Whether Kamal would run `command` in-process: it matches `\A\s*kamal\s*secrets\s+` (berth also takes `berth`).
fn is_secrets_command(command: &str) -> bool {
    let rest = command.trim_start_matches(|c: char| c.is_ascii() && is_regex_space(c as u8));
    let Some(rest) = rest.strip_prefix("kamal").or_else(|| rest.strip_prefix("berth")) else {
        return false;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii() && is_regex_space(c as u8));
    rest.strip_prefix("secrets").and_then(|rest| rest.bytes().next()).is_some_and(is_regex_space)
}

fn run_command(command: &str, context: &ParseContext<'_>) -> Result<String, SecretsError> {
    if is_secrets_command(command) {
        return super::cli::run_inline(command, context.env).map(ruby::chomp);
    }
    // Kamal runs the command with backticks: stdout captured, stderr and stdin the user's, exit status ignored.
    let mut shell = context.env.shell(command);
    shell.stdout(Stdio::piped());
    if context.quiet_stderr {
        shell.stdin(Stdio::null()).stderr(Stdio::null());
    } else {
        shell.stdin(Stdio::inherit()).stderr(Stdio::inherit());
    }
    let output = super::spawn_output(&mut shell)
        .map_err(|source| SecretsError::Spawn { program: "/bin/sh".to_string(), source })?;
    Ok(ruby::chomp(String::from_utf8_lossy(&output.stdout).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &[(&str, &str)]) -> Environment {
        let mut all = vec![("PATH", "/usr/bin:/bin")];
        all.extend_from_slice(vars);
        Environment::from_vars(all, std::env::temp_dir())
    }

    fn parse_with(text: &str, env: &Environment) -> Result<IndexMap<String, String>, SecretsError> {
        parse(text, &ParseContext { env, file: ".kamal/secrets", quiet_stderr: true })
    }

    fn parse_ok(text: &str) -> Vec<(String, String)> {
        let env = env_with(&[("FROM_ENV", "env-value"), ("SHARED", "from-env")]);
        parse_with(text, &env).unwrap_or_else(|e| panic!("{text:?}: {e}")).into_iter().collect()
    }

    #[track_caller]
    fn check(text: &str, expected: &[(&str, &str)]) {
        let expected: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(parse_ok(text), expected, "parsing {text:?}");
    }

    #[test]
    fn plain_assignments_and_separators() {
        check(
            "A=1\nB = 2\n  C=3  \nexport D=4\nE: 5\nF=\nG",
            &[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4"), ("E", "5"), ("F", ""), ("G", "")],
        );
        check("a.b_c=x\r\nCRLF=y\r\n", &[("a.b_c", "x"), ("CRLF", "y")]);
        // Later assignments win but keep the key's first position.
        check("A=1\nB=2\nA=3", &[("A", "3"), ("B", "2")]);
    }

    #[test]
    fn comments_and_non_assignments() {
        check(
            "# comment\nA=1 # trailing\nB=2#no-space\n  # indented\nif [ -f x ]; then\nC='#not' # c\n",
            &[("A", "1"), ("B", "2"), ("C", "#not")],
        );
        check("A=\"x\" # comment\nB=a b  c ", &[("A", "x"), ("B", "a b  c")]);
        // A key alone on a line is an (empty) assignment in dotenv 3; words followed by more words are skipped.
        check("fi\nset -e\ndone", &[("fi", ""), ("done", "")]);
    }

    #[test]
    fn quotes() {
        check(r#"S='a $FROM_ENV \n "q"'"#, &[("S", r#"a $FROM_ENV \n "q""#)]);
        check(r#"D="a \"q\" $FROM_ENV""#, &[("D", r#"a "q" env-value"#)]);
        check(r#"D="tab\t and \\ and \$FROM_ENV""#, &[("D", r"tabt and \ and $FROM_ENV")]);
        check("Q=\"unterminated\nB=2", &[("Q", "\"unterminated"), ("B", "2")]);
        check("E=''\nF=\"\"", &[("E", ""), ("F", "")]);
        check("M='a'b", &[("M", "'a'b")]);
    }

    #[test]
    fn newlines_in_double_quotes_follow_dotenv_3() {
        check(r#"N="a\nb\rc""#, &[("N", r"a\nb\rc")]);
        check("DOTENV_LINEBREAK_MODE=legacy\nN=\"a\\nb\"", &[("DOTENV_LINEBREAK_MODE", "legacy"), ("N", "a\nb")]);
        let env = env_with(&[("DOTENV_LINEBREAK_MODE", "legacy")]);
        assert_eq!(parse_with("N=\"a\\nb\"", &env).unwrap()["N"], "a\nb");
        // Unquoted values lose the backslash: `\n` is just `n`.
        check(r"U=a\nb", &[("U", "anb")]);
    }

    #[test]
    fn multiline_quoted_values() {
        let pem = "KEY=\"-----BEGIN KEY-----\nabc\ndef\n-----END KEY-----\"\nNEXT=1";
        check(pem, &[("KEY", "-----BEGIN KEY-----\nabc\ndef\n-----END KEY-----"), ("NEXT", "1")]);
        check("S='one\ntwo' # c\nT=3", &[("S", "one\ntwo"), ("T", "3")]);
        // `KEY:` then a newline takes the next line as the value, as dotenv's `:\s+?` does.
        check("K:\nV=1", &[("K", "V=1")]);
    }

    #[test]
    fn variable_interpolation() {
        check("A=1\nB=$A-${A}-$FROM_ENV-${MISSING}-end", &[("A", "1"), ("B", "1-1-env-value--end")]);
        // Earlier keys of the file win over the environment.
        check("SHARED=file\nX=$SHARED", &[("SHARED", "file"), ("X", "file")]);
        check("X=$SHARED\nSHARED=file", &[("X", "from-env"), ("SHARED", "file")]);
        check(r"E=\$A and \${A}", &[("E", "$A and ${A}")]);
        check("P=$ and $$ and ${} and ${FROM_ENV:-x}", &[("P", "$ and $$ and ${} and env-value:-x}")]);
        check("A=1\nURL=postgres://u:$A@h:5/db", &[("A", "1"), ("URL", "postgres://u:1@h:5/db")]);
    }

    #[test]
    fn export_without_value() {
        check("A=1\nexport A", &[("A", "1")]);
        let env = env_with(&[]);
        let error = parse_with("A=1\nexport B", &env).unwrap_err();
        assert!(matches!(&error, SecretsError::UnsetExport { line: 2, key, .. } if key == "B"), "{error}");
        assert!(error.to_string().contains(".kamal/secrets:2"), "{error}");
    }

    #[test]
    fn command_substitution() {
        check("A=$(echo hello)", &[("A", "hello")]);
        check(r"A=$(printf 'a\\n\\n')", &[("A", "a\n")]);
        check("A=x$(echo $FROM_ENV)y", &[("A", "xenv-valuey")]);
        check("V=val\nA=$(echo $V)", &[("V", "val"), ("A", "val")]);
        check("A=$(echo $(echo nested))", &[("A", "nested")]);
        check("A=\"$(echo 'a b')\"", &[("A", "a b")]);
        check("A='$(echo no)'", &[("A", "$(echo no)")]);
        check(r"A=\$(echo no)", &[("A", "$(echo no)")]);
        check("A=$(false)", &[("A", "")]);
        check("A=$()", &[("A", "$()")]);
        check("A=$(echo (unbalanced)", &[("A", "$(echo (unbalanced)")]);
    }

    #[test]
    fn in_process_secrets_commands() {
        let text = "SECRETS=$(kamal secrets fetch --adapter test --account acct --from Vault A B)\n\
                    A=$(kamal secrets extract A $SECRETS)\n\
                    B=$(berth secrets extract Vault/B ${SECRETS})\n";
        check(
            text,
            &[
                ("SECRETS", r#"\{\"Vault/A\":\"A/tluaV\",\"Vault/B\":\"B/tluaV\"\}"#),
                ("A", "A/tluaV"),
                ("B", "B/tluaV"),
            ],
        );
        // The test adapter turns LPAREN into `(`: an escaped paren in the JSON must not end the command early.
        check(
            "S=$(kamal secrets fetch -a test --account x LPARENx)\nV=$(kamal secrets extract LPARENx $S)",
            &[("S", r#"\{\"LPARENx\":\"x\(\"\}"#), ("V", "x(")],
        );
    }

    #[test]
    fn dollar_signs_in_fetched_values_survive_extract() {
        // The blob is inserted by the first variable pass and not rescanned; the command's own pass only drops the
        // backslash of `\$`, and shell-splitting keeps the `$`.
        check(
            r#"S='\{\"A\":\"x\$y\ \(z\)\"\}'
A=$(kamal secrets extract A $S)"#,
            &[("S", r#"\{\"A\":\"x\$y\ \(z\)\"\}"#), ("A", "x$y (z)")],
        );
    }

    #[test]
    fn in_process_errors_name_file_and_line() {
        let env = env_with(&[]);
        let error = parse_with("A=1\nB=$(kamal secrets extract MISSING '{}')", &env).unwrap_err();
        assert!(error.to_string().starts_with(".kamal/secrets:2: Could not find secret MISSING"), "{error}");
    }

    #[test]
    fn scanner_positions() {
        let found = find_assignment(b"\n\n  export  KEY = 'v' # c\nX=1", 0).unwrap();
        assert_eq!(found, Assignment { end: 25, export: true, key: (12, 15), value: Some((17, 21)) });
    }
}
