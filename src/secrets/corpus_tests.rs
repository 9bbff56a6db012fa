//! Every `.kamal/secrets*` file of the real configurations in the corpus (`tests/corpus`), loaded the way Kamal
//! loads it.
//!
//! The environment is the one Kamal's recorded runs had (`env.json`'s dummy variables; vendor CLIs replaced by stubs
//! that print nothing and exit 0). With such stubs Kamal itself fails the files that fetch from a vault in-process
//! (it parses the empty output as JSON), so those are pinned as failures with berth's message; everything else
//! must load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::test_support::TempDir;
use super::{DEFAULT_SECRETS_PATH, Secrets, dotenv};
use crate::environment::Environment;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

/// The vendor CLIs the recorded runs stubbed out, and a few more that adapters call.
const STUBS: &[&str] = &[
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
    "gcloud",
    "lpass",
    "enpass-cli",
    "passbolt",
    "infisical",
    "kamal",
];

/// `(case, how it was loaded, what the error must say)` for the loads that must fail.
const EXPECTED_FAILURES: &[(&str, &str, &str)] = &[
    ("bikeindex__bike_index", "no destination", "1password adapter: `op item get"),
    ("datocms__astro-website", "-d production", "bitwarden adapter: `bw status` printed nothing"),
    ("datocms__astro-website", "-d staging", "bitwarden adapter: `bw status` printed nothing"),
    ("feather-page__cms", "no destination", "1password adapter: `op item get Production"),
    (
        "goinvo__staffplan_redux",
        "no destination",
        "1password adapter: `op item get RAILS_MASTER_KEY --vault StaffplanRedux",
    ),
    ("iedora__web", "-d production", "bitwarden-sm adapter: `bws secret list e0f72a13"),
    ("RodCyb3Dev__gandalf-gate-iac", "-d sample", "`kamal secrets extract`: unexpected argument"),
    ("seithq__milkyland", "no destination", "1password adapter: `op item get KamalSecrets"),
    ("ursm__pong", "no destination", "bitwarden-sm adapter: `bws secret list` printed nothing"),
];

fn case_env(case: &str, stubs: &Path, tmp: &Path, root: &Path) -> Environment {
    let env_json = Path::new(CORPUS).join("real-configs-kamal-output").join(case).join("env.json");
    let text = std::fs::read_to_string(&env_json).unwrap_or_else(|e| panic!("{}: {e}", env_json.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("env.json is JSON");
    let mut env = Environment::from_vars([("LANG", "C.UTF-8"), ("LC_ALL", "C.UTF-8")], root);
    env.set("VERSION", "1234567890abcdef1234567890abcdef12345678");
    env.set("PATH", format!("{}:/usr/bin:/bin", stubs.display()));
    env.set("TMPDIR", tmp.display().to_string());
    for (name, value) in json["dummy_env"].as_object().expect("dummy_env is an object") {
        env.set(name.clone(), value.as_str().unwrap_or_default());
    }
    env
}

fn secrets_files(kamal_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(kamal_dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.retain(|name| name.starts_with("secrets"));
    names.sort();
    names
}

#[test]
fn every_real_secrets_file_loads_like_kamal() {
    let real = Path::new(CORPUS).join("real-configs");
    let Ok(entries) = std::fs::read_dir(&real) else {
        panic!("the corpus is missing at {}", real.display());
    };
    let stubs = TempDir::new("stubs");
    for stub in STUBS {
        let path = stubs.path().join(stub);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tmp = TempDir::new("tmp");
    let mut cases: Vec<PathBuf> =
        entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.join(".kamal").is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 20, "expected the corpus's configurations with .kamal/, found {}", cases.len());

    let mut outcomes: BTreeMap<(String, String), Result<usize, String>> = BTreeMap::new();
    let mut files_read = 0;
    for root in &cases {
        let case = root.file_name().unwrap().to_string_lossy().into_owned();
        let env = case_env(&case, stubs.path(), tmp.path(), root);
        let mut destinations: BTreeSet<Option<String>> = BTreeSet::from([None]);
        for name in secrets_files(&root.join(".kamal")) {
            if let Some(destination) = name.strip_prefix("secrets.") {
                destinations.insert(Some(destination.to_string()));
            } else if name != "secrets" && name != "secrets-common" {
                // Never read by Kamal (`secrets-ci`, `secrets-common.example`): it must still parse on its own.
                let file = format!(".kamal/{name}");
                let text = std::fs::read_to_string(root.join(&file)).unwrap();
                let context = dotenv::ParseContext { env: &env, file: &file, quiet_stderr: true };
                let outcome = dotenv::parse(&text, &context).map(|values| values.len()).map_err(|e| e.to_string());
                outcomes.insert((case.clone(), format!("{file} alone")), outcome);
                files_read += 1;
            }
        }
        for destination in destinations {
            let how = destination.as_ref().map_or("no destination".to_string(), |d| format!("-d {d}"));
            let loaded = Secrets::load_with(root, DEFAULT_SECRETS_PATH, destination.as_deref(), &env, true);
            if let Ok(secrets) = &loaded {
                files_read += secrets.files().len();
            }
            outcomes.insert((case.clone(), how), loaded.map(|secrets| secrets.len()).map_err(|e| e.to_string()));
        }
    }

    let mut unexpected = Vec::new();
    for ((case, how), outcome) in &outcomes {
        let expected = EXPECTED_FAILURES.iter().find(|(c, h, _)| c == case && h == how);
        match (outcome, expected) {
            (Ok(_), None) => {}
            (Err(error), Some((_, _, message))) if error.contains(message) => {}
            (outcome, expected) => unexpected.push(format!("{case} ({how}): got {outcome:?}, expected {expected:?}")),
        }
    }
    for (case, how, _) in EXPECTED_FAILURES {
        if !outcomes.contains_key(&(case.to_string(), how.to_string())) {
            unexpected.push(format!("{case} ({how}): expected a failure but it was not loaded"));
        }
    }
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
    assert!(files_read >= 30, "only {files_read} secrets files were read");
}

#[test]
fn real_interpolation_resolves_from_earlier_keys() {
    let root = Path::new(CORPUS).join("real-configs/Dremora__my-music");
    let env = Environment::from_vars([("PATH", "/usr/bin:/bin"), ("POSTGRES_PASSWORD", "pw")], &root);
    let secrets = Secrets::load_with(&root, DEFAULT_SECRETS_PATH, None, &env, true).unwrap();
    assert_eq!(secrets.get("DATABASE_URL").unwrap(), "postgresql://my_music:pw@my-music-postgres:5432/my_music");
    assert_eq!(secrets.get("DIRECT_DATABASE_URL").unwrap(), secrets.get("DATABASE_URL").unwrap());
    assert_eq!(secrets.get("USER_PASSWORD").unwrap(), "");
}
