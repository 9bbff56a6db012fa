//! `berth config`, `init`, `docs` and `completions` as a user runs them: what they print, and the errors for
//! bad input, each naming the file, line or YAML path, and the fix.

use crate::support::berth::Project;

const VALID: &str = "\
service: app
image: me/app
servers:
  web: [10.0.0.1, 10.0.0.2]
  workers:
    hosts: [10.0.0.3]
    cmd: bin/jobs
registry:
  username: me
  password: [KAMAL_REGISTRY_PASSWORD]
builder:
  arch: amd64
env:
  clear:
    RAILS_ENV: production
  secret:
    - DB_PASSWORD
";

fn project_with(deploy_yml: &str) -> Project {
    let mut project = Project::new();
    project.write("config/deploy.yml", deploy_yml);
    project.env.insert("VERSION".into(), "v1".into());
    project
}

#[test]
fn config_prints_the_resolved_configuration() {
    let project = project_with(VALID);
    let out = project.berth(&["config"]);
    let yaml: yaml_serde::Value = yaml_serde::from_str(out.ok()).unwrap();
    assert_eq!(yaml["service"], "app");
    assert_eq!(yaml["absolute_image"], "me/app:v1");
    assert_eq!(yaml["primary_host"], "10.0.0.1");
    assert_eq!(yaml["roles"][1]["name"], "workers");
    assert_eq!(yaml["roles"][1]["cmd"], "bin/jobs");
    assert_eq!(yaml["roles"][0]["container"], "app-web-v1");
    assert_eq!(yaml["registry"]["password"]["secret"], "KAMAL_REGISTRY_PASSWORD");
}

#[test]
fn config_with_a_destination_merges_the_destination_file() {
    let project = project_with(VALID);
    project.write("config/deploy.staging.yml", "servers:\n  web: [10.9.9.9]\n");
    let out = project.berth(&["config", "-d", "staging", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(json["destination"], "staging");
    assert_eq!(json["roles"][0]["hosts"], serde_json::json!(["10.9.9.9"]));
    // The workers role is untouched by the merge; arrays are replaced, maps merged.
    assert_eq!(json["roles"][1]["hosts"], serde_json::json!(["10.0.0.3"]));
    assert_eq!(json["roles"][0]["container"], "app-web-staging-v1");

    let err = project.berth(&["config", "-d", "missing"]);
    let message = err.err();
    assert!(message.contains("config/deploy.missing.yml"), "{message}");
    assert!(message.contains("not found"), "{message}");
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let project = project_with("service: app\nimage: me/app\nservers:\n  - 10.0.0.1\n  web: [oops\n");
    let message = project.berth(&["config"]).err().to_string();
    assert!(message.contains("config/deploy.yml:5"), "{message}");
    assert!(message.contains("invalid YAML"), "{message}");
    assert!(message.contains("fix the YAML syntax"), "{message}");
}

#[test]
fn a_wrong_type_names_its_yaml_path() {
    let project = project_with(&VALID.replace("cmd: bin/jobs", "cmd: bin/jobs\n    stop_timeout: 30s"));
    let message = project.berth(&["config"]).err().to_string();
    assert!(message.contains("servers/workers/stop_timeout: should be an integer"), "{message}");
}

#[test]
fn an_unknown_key_suggests_the_key_meant() {
    let project = project_with(&format!("{VALID}proxy:\n  app_prot: 3000\n  helthcheck: {{path: /up}}\n"));
    let message = project.berth(&["config"]).err().to_string();
    assert!(message.contains("proxy: unknown keys: app_prot, helthcheck"), "{message}");
    assert!(message.contains("did you mean `app_port`"), "{message}");
    assert!(message.contains("did you mean `healthcheck`"), "{message}");
}

#[test]
fn kamal_1_keys_are_rejected_with_their_kamal_2_equivalent() {
    let project = project_with(&format!("{VALID}traefik:\n  args: {{}}\nhealthcheck:\n  path: /up\n"));
    let message = project.berth(&["config"]).err().to_string();
    assert!(message.contains("unknown keys: traefik, healthcheck"), "{message}");
    assert!(message.contains("`proxy:`"), "{message}");
    assert!(message.contains("proxy: { healthcheck:"), "{message}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let broken = VALID
        .replace("service: app", "service: my app")
        .replace("arch: amd64", "arch: amd64\n  cache: {type: s3}")
        .replace("cmd: bin/jobs", "cmd: bin/jobs\n    stop_timeout: soon");
    let project = project_with(&broken);
    let message = project.berth(&["config"]).err().to_string();
    assert!(message.contains("3 problems"), "{message}");
    assert!(message.contains("servers/workers/stop_timeout: should be an integer"), "{message}");
    assert!(message.contains("builder: Invalid cache type: s3"), "{message}");
    assert!(message.contains("service: Service name can only include"), "{message}");
}

#[test]
fn a_required_destination_must_be_given() {
    let project = project_with(&format!("{VALID}require_destination: true\n"));
    project.write("config/deploy.production.yml", "");
    let message = project.berth(&["config"]).err().to_string();
    assert!(message.contains("You must specify a destination"), "{message}");
    assert!(message.contains("-d DESTINATION"), "{message}");
    project.berth(&["config", "-d", "production"]).ok();
}

#[test]
fn config_never_prints_a_secret_value() {
    let mut project =
        project_with(&VALID.replace("password: [KAMAL_REGISTRY_PASSWORD]", "password: literal-registry-pw-123"));
    project.write(".kamal/secrets", "KAMAL_REGISTRY_PASSWORD=registry-secret-456\nDB_PASSWORD=db-secret-789\n");
    project.env.insert("KAMAL_REGISTRY_PASSWORD".into(), "env-secret-000".into());
    for format in ["yaml", "json", "kamal"] {
        let out = project.berth(&["config", "--format", format]);
        let printed = format!("{}{}", out.ok(), out.stderr);
        for secret in ["literal-registry-pw-123", "registry-secret-456", "db-secret-789", "env-secret-000"] {
            assert!(!printed.contains(secret), "{format} output shows {secret}:\n{printed}");
        }
    }
}

#[test]
fn init_writes_a_config_that_loads_and_keeps_secrets_out_of_git() {
    let mut project = Project::new();
    project.env.insert("VERSION".into(), "v1".into());
    let out = project.berth(&["init"]);
    assert!(out.ok().contains("created config/deploy.yml"), "{}", out.stdout);
    assert!(project.path().join(".kamal/hooks/pre-deploy.sample").exists());
    let gitignore = std::fs::read_to_string(project.path().join(".gitignore")).unwrap();
    assert!(gitignore.lines().any(|l| l == ".kamal/secrets*"), "{gitignore}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(project.path().join(".kamal/secrets")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = project.berth(&["config", "--format", "kamal"]);
    assert!(config.ok().contains(":primary_host: 192.168.0.1"), "{}", config.stdout);
    // A second init changes nothing.
    let again = project.berth(&["init"]);
    assert!(again.ok().contains("config/deploy.yml already exists"), "{}", again.stdout);
}

#[test]
fn docs_lists_sections_and_explains_one() {
    let project = Project::new();
    let sections = project.berth(&["docs"]);
    assert!(sections.ok().contains("proxy"), "{}", sections.stdout);
    let proxy = project.berth(&["docs", "proxy"]);
    assert!(proxy.ok().contains("app_port"), "{}", proxy.stdout);
    let unknown = project.berth(&["docs", "proxxy"]);
    assert!(unknown.err().contains("known sections"), "{}", unknown.stderr);
}

#[test]
fn completions_and_help_are_available_for_every_shell() {
    let project = Project::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = project.berth(&["completions", shell]);
        assert!(out.ok().contains("berth"), "{shell}");
    }
    let help = project.berth(&["config", "--help"]);
    assert!(help.ok().contains("--format"), "{}", help.stdout);
}

#[test]
fn a_missing_secret_names_the_secret_the_yaml_path_and_the_files_to_add_it_to() {
    let project = project_with(VALID);
    project.write(".kamal/secrets", "KAMAL_REGISTRY_PASSWORD=registry-secret-456\n");
    let message = project.berth(&["config", "--check-secrets"]).err().to_string();
    assert!(message.contains("env/secret: secret 'DB_PASSWORD' not found in .kamal/secrets"), "{message}");
    assert!(message.contains("add `DB_PASSWORD=...`"), "{message}");
    assert!(!message.contains("registry-secret-456"), "{message}");

    project.write(".kamal/secrets", "KAMAL_REGISTRY_PASSWORD=registry-secret-456\nDB_PASSWORD=$(printf db-secret)\n");
    let out = project.berth(&["config", "--check-secrets"]);
    assert!(!out.ok().contains("db-secret"), "{}", out.stdout);
}

#[test]
fn erb_is_evaluated_before_yaml_and_sees_the_destination() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/kamal-fixtures/deploy.erb.yml");
    let project = project_with(&std::fs::read_to_string(fixture).unwrap());
    let out = project.berth(&["config", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    // Kamal's own test expects exactly this of the fixture.
    assert_eq!(json["registry"]["username"], "my-user");

    let project = project_with(&VALID.replace("image: me/app", "image: me/app-<%= ENV[\"KAMAL_DESTINATION\"] %>"));
    project.write("config/deploy.beta.yml", "");
    let out = project.berth(&["config", "-d", "beta", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(json["image"], "me/app-beta");
}

#[test]
fn a_bad_erb_expression_names_the_file_line_and_fix() {
    let project = project_with(&VALID.replace("image: me/app", "image: <%= ENV.fetch(\"APP_IMAGE\") %>"));
    let message = project.berth(&["config"]).err().to_string();
    assert!(message.contains("config/deploy.yml:2"), "{message}");
    assert!(message.contains("APP_IMAGE"), "{message}");
    assert!(message.contains("ENV.fetch(\"APP_IMAGE\", default)"), "{message}");
}
