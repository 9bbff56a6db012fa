//! `berth config` against every run of the real `kamal config` (2.12.0) recorded in `tests/corpus`:
//! berth must load exactly what Kamal loads, reject exactly what it rejects, and resolve the same values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_serde::Value;

use crate::support::berth::Project;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// One recorded `kamal config` run.
struct Case {
    name: String,
    /// Files to lay out as the project: (path inside the project, source file).
    files: Vec<(String, PathBuf)>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    kamal_rc: i32,
    kamal_output: String,
}

/// Vendor CLIs that secrets files and ERB call; Kamal's runs replaced them with commands printing nothing.
const VENDOR_CLIS: &[&str] = &[
    "op",
    "bw",
    "bws",
    "aws",
    "gh",
    "sops",
    "vault",
    "npx",
    "rails",
    "doppler",
    "lpass",
    "gcloud",
    "enpass-cli",
    "passbolt",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn read_env(env_json: &Path) -> BTreeMap<String, String> {
    let json: serde_json::Value = serde_json::from_str(&read(env_json)).unwrap();
    let mut env = BTreeMap::new();
    for part in ["base_env", "dummy_env"] {
        for (k, v) in json[part].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_string());
        }
    }
    env
}

/// `kamal config -c config/X.yml [-d DEST]` -> berth's arguments.
fn args_of(cmd: &str) -> Vec<String> {
    let words: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
    assert_eq!(&words[..2], ["kamal", "config"], "unexpected command {cmd}");
    let mut args = vec!["config".to_string(), "--format".to_string(), "kamal".to_string()];
    args.extend(words[2..].iter().cloned());
    args
}

fn variants(dir: &Path) -> Vec<PathBuf> {
    let mut cmds: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cmd"))
        .collect();
    cmds.sort();
    cmds
}

fn case_from(name: String, cmd: &Path, env: &BTreeMap<String, String>, files: Vec<(String, PathBuf)>) -> Case {
    let stem = cmd.with_extension("");
    Case {
        name: format!("{name}/{}", stem.file_name().unwrap().to_string_lossy()),
        files,
        args: args_of(read(cmd).trim()),
        env: env.clone(),
        kamal_rc: read(&stem.with_extension("rc")).trim().parse().unwrap(),
        kamal_output: read(&stem.with_extension("yml")),
    }
}

fn fixture_cases() -> Vec<Case> {
    let fixtures = corpus().join("kamal-fixtures");
    let files: Vec<(String, PathBuf)> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yml"))
        .map(|p| (format!("config/{}", p.file_name().unwrap().to_string_lossy()), p))
        .collect();
    let mut cases = Vec::new();
    let outputs = corpus().join("kamal-fixtures-kamal-output");
    for entry in std::fs::read_dir(&outputs).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let env = read_env(&dir.join("env.json"));
        // Most cases nest their runs in a folder of the same name; `deploy` keeps them at the top.
        let runs = if dir.join(&name).is_dir() { dir.join(&name) } else { dir.clone() };
        for cmd in variants(&runs) {
            cases.push(case_from(format!("fixture {name}"), &cmd, &env, files.clone()));
        }
    }
    cases
}

fn real_config_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let outputs = corpus().join("real-configs-kamal-output");
    for entry in std::fs::read_dir(&outputs).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let source = corpus().join("real-configs").join(&name);
        let mut files = Vec::new();
        for file in std::fs::read_dir(&source).unwrap() {
            let path = file.unwrap().path();
            let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
            if file_name.starts_with("deploy") {
                files.push((format!("config/{file_name}"), path));
            }
        }
        if let Ok(kamal_dir) = std::fs::read_dir(source.join(".kamal")) {
            for file in kamal_dir {
                let path = file.unwrap().path();
                files.push((format!(".kamal/{}", path.file_name().unwrap().to_string_lossy()), path));
            }
        }
        let env = read_env(&dir.join("env.json"));
        for cmd in variants(&dir) {
            cases.push(case_from(format!("real {name}"), &cmd, &env, files.clone()));
        }
    }
    cases
}

/// Runs berth on one case; returns a description of every difference from Kamal's recorded outcome.
fn differences(case: &Case) -> Vec<String> {
    let mut project = Project::new();
    for (relative, source) in &case.files {
        project.write(relative, &read(source));
    }
    project.write(".ruby-version", "3.3.0\n");
    let stubs = project.path().join(".vendor-cli-stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    for cli in VENDOR_CLIS {
        let stub = stubs.join(cli);
        std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    project.env = case.env.clone();
    project.env.insert("PATH".into(), format!("{}:/usr/local/bin:/usr/bin:/bin", stubs.display()));
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let output = project.berth(&args);

    if case.kamal_rc != 0 {
        if output.success {
            return vec![format!("Kamal rejects it ({}) but berth loads it", kamal_error(&case.kamal_output))];
        }
        let expected = kamal_error(&case.kamal_output);
        if expected.starts_with("ERROR (Kamal::ConfigurationError)") || expected.starts_with("ERROR (ArgumentError)") {
            let message = expected.split_once("): ").map(|(_, m)| m).unwrap_or(&expected);
            if !output.stderr.contains(message) {
                return vec![format!("Kamal says {message:?}; berth says {:?}", output.stderr.trim())];
            }
        }
        return Vec::new();
    }
    if !output.success {
        return vec![format!("Kamal loads it but berth fails: {}", output.stderr.trim())];
    }
    let kamal = summary_fields(&case.kamal_output);
    let berth = summary_fields(&output.stdout);
    let mut diffs = Vec::new();
    for (field, kamal_value) in &kamal {
        match berth.get(field) {
            Some(berth_value) if berth_value == kamal_value => (),
            Some(berth_value) => diffs.push(format!(
                "{field}: Kamal {} / berth {}",
                yaml_serde::to_string(kamal_value).unwrap().trim(),
                yaml_serde::to_string(berth_value).unwrap().trim()
            )),
            None => diffs.push(format!("{field}: missing from berth's summary")),
        }
    }
    for field in berth.keys().filter(|f| !kamal.contains_key(*f)) {
        diffs.push(format!("{field}: printed by berth, not by Kamal"));
    }
    diffs
}

/// The `ERROR (...): message` line of a failed Kamal run, without terminal colours.
fn kamal_error(output: &str) -> String {
    let clean = output.replace("\u{1b}[31m", "").replace("\u{1b}[0m", "");
    clean.lines().find(|l| l.contains("ERROR")).unwrap_or(clean.lines().next().unwrap_or("")).trim().to_string()
}

/// A `kamal config` summary as field -> value, read as Ruby's Psych reads it (so `'yes'` and `yes` differ), with
/// Ruby's `:symbol` keys made plain at every level.
fn summary_fields(text: &str) -> BTreeMap<String, Value> {
    let value = berth::config::source::parse_psych(text).unwrap_or_else(|e| panic!("parse summary: {e}\n{text}"));
    let Value::Mapping(map) = normalize(value) else { panic!("summary is not a mapping:\n{text}") };
    map.into_iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v)).collect()
}

fn normalize(value: Value) -> Value {
    match value {
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(s) => Value::String(s.trim_start_matches(':').to_string()),
                        other => other,
                    };
                    (k, normalize(v))
                })
                .collect(),
        ),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn check_all(cases: Vec<Case>) {
    assert!(!cases.is_empty(), "no recorded cases found under {}", corpus().display());
    let mut failures = Vec::new();
    for case in &cases {
        for diff in differences(case) {
            failures.push(format!("{}: {diff}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences from Kamal in {} runs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn berth_config_matches_kamal_on_every_kamal_fixture() {
    check_all(fixture_cases());
}

#[test]
fn berth_config_matches_kamal_on_every_real_users_config() {
    check_all(real_config_cases());
}
