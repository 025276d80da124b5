//! The image config a build edits step by step: Docker's image config JSON (a superset
//! of OCI's, with `Healthcheck`, `OnBuild` and `Shell`), kept as JSON so that fields
//! Apex does not model pass through untouched.

use serde_json::{json, Map, Value};

/// The shell of shell-form commands when the image sets none.
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// The config of `FROM scratch`.
pub fn scratch() -> Value {
    json!({
        "architecture": apex_oci::platform::Platform::host().architecture,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    })
}

/// The `config` object of an image config (created if missing).
pub fn section(cfg: &mut Value) -> &mut Map<String, Value> {
    if !cfg["config"].is_object() {
        cfg["config"] = json!({});
    }
    cfg["config"].as_object_mut().expect("an object")
}

/// The image's environment as `KEY=value` strings.
pub fn env(cfg: &Value) -> Vec<String> {
    strings(&cfg["config"]["Env"])
}

/// A JSON array of strings as a vector (anything else is empty).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `key=value` in the environment, replacing an earlier value of `key`.
pub fn set_env(cfg: &mut Value, key: &str, value: &str) {
    let mut env = env(cfg);
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == key)
    {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
    section(cfg).insert("Env".into(), json!(env));
}

/// Looks `name` up in `KEY=value` strings.
pub fn lookup<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

/// Adds `key: {}` to an object-valued field (`ExposedPorts`, `Volumes`).
pub fn add_to_set(cfg: &mut Value, field: &str, key: &str) {
    let sec = section(cfg);
    if !sec.get(field).is_some_and(Value::is_object) {
        sec.insert(field.into(), json!({}));
    }
    sec[field]
        .as_object_mut()
        .expect("an object")
        .insert(key.into(), json!({}));
}

/// Sets a label.
pub fn set_label(cfg: &mut Value, key: &str, value: &str) {
    let sec = section(cfg);
    if !sec.get("Labels").is_some_and(Value::is_object) {
        sec.insert("Labels".into(), json!({}));
    }
    sec["Labels"]
        .as_object_mut()
        .expect("an object")
        .insert(key.into(), json!(value));
}

/// The shell of shell-form commands.
pub fn shell(cfg: &Value) -> Vec<String> {
    let s = strings(&cfg["config"]["Shell"]);
    if s.is_empty() {
        DEFAULT_SHELL.map(String::from).to_vec()
    } else {
        s
    }
}

/// Appends a history entry and stamps the config with `created`.
pub fn add_history(cfg: &mut Value, created: &str, created_by: &str, empty_layer: bool) {
    let mut h = json!({"created": created, "created_by": created_by});
    if empty_layer {
        h["empty_layer"] = json!(true);
    }
    if !cfg["history"].is_array() {
        cfg["history"] = json!([]);
    }
    cfg["history"].as_array_mut().expect("an array").push(h);
    cfg["created"] = json!(created);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_replaces_and_looks_up_the_last_value() {
        let mut c = scratch();
        set_env(&mut c, "A", "1");
        set_env(&mut c, "B", "x=y");
        set_env(&mut c, "A", "2");
        assert_eq!(env(&c), ["A=2", "B=x=y"]);
        assert_eq!(lookup(&env(&c), "B"), Some("x=y"));
        assert_eq!(lookup(&env(&c), "C"), None);
    }

    #[test]
    fn sets_labels_ports_and_history() {
        let mut c = scratch();
        set_label(&mut c, "k", "v");
        add_to_set(&mut c, "ExposedPorts", "80/tcp");
        add_history(&mut c, "2026-01-01T00:00:00Z", "ENV A=1", true);
        add_history(&mut c, "2026-01-01T00:00:00Z", "RUN x", false);
        assert_eq!(c["config"]["Labels"]["k"], "v");
        assert!(c["config"]["ExposedPorts"]["80/tcp"].is_object());
        assert_eq!(c["history"][0]["empty_layer"], true);
        assert!(c["history"][1].get("empty_layer").is_none());
        assert_eq!(shell(&c), ["/bin/sh", "-c"]);
    }
}
