//! `Cmd`: a command to run on a host — one POSIX shell script built from quoted words, plus optional stdin.
//!
//! This is the only place that builds shell text. Command builders (`crate::commands`) compose `Cmd`s from
//! words that are quoted here; the SSH executor sends `script()` to the host's shell and `stdin()` on the channel.
//! Secrets travel only in `stdin` (e.g. `docker login --password-stdin`), never in the script, so they never
//! reach a process's argv on the host.

use std::fmt;

/// A shell command for a remote host. Build with [`Cmd::new`] and the word/connective methods.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Cmd {
    script: String,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    /// A command starting with `program` (quoted if needed).
    pub fn new(program: impl AsRef<str>) -> Cmd {
        Cmd { script: quote(program.as_ref()), stdin: None }
    }

    /// A command from shell text that is used as is. Only for fixed fragments written in builders
    /// (e.g. `$PWD`, `2> /dev/null`, `$(...)`), never for user input.
    pub fn raw_script(text: impl Into<String>) -> Cmd {
        Cmd { script: text.into(), stdin: None }
    }

    /// Appends one word, quoted so that the shell sees it verbatim.
    pub fn arg(mut self, word: impl AsRef<str>) -> Cmd {
        self.script.push(' ');
        self.script.push_str(&quote(word.as_ref()));
        self
    }

    /// Appends several words, each quoted.
    pub fn args<I, S>(mut self, words: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for word in words {
            self = self.arg(word);
        }
        self
    }

    /// Appends one word in double quotes where `${NAME}` stays expandable by the host's shell and everything
    /// else is literal — Kamal's treatment of clear env values (`HOST_TOKEN: "${HOST_TOKEN}"` reads the host).
    pub fn arg_expanding_braced_vars(mut self, word: impl AsRef<str>) -> Cmd {
        self.script.push(' ');
        self.script.push_str(&quote_keeping_braced_vars(word.as_ref()));
        self
    }

    /// Appends fixed shell text unquoted (see [`Cmd::raw_script`]).
    pub fn raw(mut self, text: impl AsRef<str>) -> Cmd {
        self.script.push(' ');
        self.script.push_str(text.as_ref());
        self
    }

    /// `self && next`
    pub fn and(self, next: Cmd) -> Cmd {
        self.join("&&", next)
    }

    /// `self || next`
    pub fn or(self, next: Cmd) -> Cmd {
        self.join("||", next)
    }

    /// `self | next`
    pub fn pipe(self, next: Cmd) -> Cmd {
        self.join("|", next)
    }

    /// `self ; next`
    pub fn then(self, next: Cmd) -> Cmd {
        self.join(";", next)
    }

    /// Wraps the script in `sh -c '…'` (for when the whole thing must be one word, e.g. inside `$(…)`).
    pub fn in_subshell(self) -> Cmd {
        Cmd { script: format!("sh -c {}", quote(&self.script)), stdin: self.stdin }
    }

    /// Bytes written to the command's standard input, then closed.
    pub fn with_stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn script(&self) -> &str {
        &self.script
    }

    pub fn stdin(&self) -> Option<&[u8]> {
        self.stdin.as_deref()
    }

    fn join(mut self, connective: &str, next: Cmd) -> Cmd {
        self.script.push(' ');
        self.script.push_str(connective);
        self.script.push(' ');
        self.script.push_str(&next.script);
        if self.stdin.is_none() {
            self.stdin = next.stdin;
        }
        self
    }
}

impl fmt::Display for Cmd {
    /// The script as the user sees it in logs. Stdin is never shown: it may hold a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.script)
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmd")
            .field("script", &self.script)
            .field("stdin", &self.stdin.as_ref().map(|bytes| format!("<{} bytes>", bytes.len())))
            .finish()
    }
}

/// Quotes a word for a POSIX shell: unchanged when it only has safe characters, else in single quotes.
pub fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_string();
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Double-quotes `word`, escaping `"`, `\`, `` ` `` and every `$` that does not start a `${NAME}` reference.
pub fn quote_keeping_braced_vars(word: &str) -> String {
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('"');
    let chars: Vec<char> = word.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '$' if is_braced_var_at(&chars, i) => {
                let end = chars[i..].iter().position(|&c| c == '}').map(|p| i + p).unwrap_or(chars.len() - 1);
                quoted.extend(&chars[i..=end]);
                i = end + 1;
                continue;
            }
            '"' | '\\' | '`' | '$' => {
                quoted.push('\\');
                quoted.push(c);
            }
            _ => quoted.push(c),
        }
        i += 1;
    }
    quoted.push('"');
    quoted
}

fn is_braced_var_at(chars: &[char], at: usize) -> bool {
    if chars.get(at + 1) != Some(&'{') {
        return false;
    }
    let name: Vec<char> = chars[at + 2..].iter().take_while(|&&c| c != '}').copied().collect();
    let closed = chars.len() > at + 2 + name.len();
    closed
        && !name.is_empty()
        && (name[0].is_ascii_alphabetic() || name[0] == '_')
        && name.iter().all(|c| c.is_ascii_alphanumeric() || *c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh").arg("-c").arg(script).env("HOST_TOKEN", "abcd").output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn safe_words_are_left_alone_and_others_single_quoted() {
        assert_eq!(quote("docker"), "docker");
        assert_eq!(quote("name=^app-web-v1$"), "'name=^app-web-v1$'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn quoted_words_reach_the_program_verbatim() {
        let tricky = ["a b", "$(rm -rf /)", "`x`", "it's", "\"q\"", "back\\slash", "*", "ünï", "${HOST_TOKEN}"];
        for word in tricky {
            let cmd = Cmd::new("printf").arg("%s").arg(word);
            assert_eq!(sh(cmd.script()), word, "word {word:?}");
        }
    }

    #[test]
    fn braced_vars_expand_on_the_host_and_everything_else_is_literal() {
        let cmd = Cmd::new("printf").arg("%s").arg_expanding_braced_vars("t=${HOST_TOKEN} $HOME `id` \"q\" \\ $(x) ${");
        assert_eq!(sh(cmd.script()), "t=abcd $HOME `id` \"q\" \\ $(x) ${");
    }

    #[test]
    fn connectives_join_scripts() {
        let cmd = Cmd::new("mkdir").arg(".kamal").and(Cmd::new("echo").arg("a b")).or(Cmd::new("true"));
        assert_eq!(cmd.script(), "mkdir .kamal && echo 'a b' || true");
        assert_eq!(Cmd::new("echo").arg("x").in_subshell().script(), "sh -c 'echo x'");
    }

    #[test]
    fn stdin_never_shows_in_display_or_debug() {
        let cmd = Cmd::new("docker").arg("login").arg("--password-stdin").with_stdin(b"hunter2".to_vec());
        assert!(!format!("{cmd} {cmd:?}").contains("hunter2"));
        assert_eq!(cmd.stdin(), Some(&b"hunter2"[..]));
    }
}
