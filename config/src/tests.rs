use super::*;

#[test]
fn model_ids_are_readable() {
    let id = |p: &str| model_id_from_path(Path::new(p));
    assert_eq!(
        id("/m/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "smollm2-135m-instruct"
    );
    assert_eq!(id("gemma-3-270m-q4_k_m.gguf"), "gemma-3-270m");
    assert_eq!(id("llama-3-8b.f16.gguf"), "llama-3-8b");
    assert_eq!(id("plain.gguf"), "plain");
}

#[test]
fn unknown_fields_are_named() {
    let err = RawConfig::from_toml("listen = \"127.0.0.1:1\"\nlisen = 3\n")
        .err()
        .unwrap_or_default();
    assert!(err.contains("lisen"), "{err}");
    let err = RawConfig::from_toml("[[models]]\npath = \"a.gguf\"\nslot = 2\n")
        .err()
        .unwrap_or_default();
    assert!(err.contains("slot"), "{err}");
}

#[test]
fn validation_names_field_and_value() {
    let raw =
        RawConfig::from_toml("[[models]]\npath = \"a.gguf\"\nslots = 0\n").unwrap_or_default();
    let err = raw
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(err, "`models[0].slots` must be between 1 and 256, got 0");
    let raw = RawConfig::from_toml("listen = \"nowhere\"").unwrap_or_default();
    let err = raw
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("listen") && err.contains("nowhere"), "{err}");
}

#[test]
fn defaults_fill_a_minimal_model() {
    let raw = RawConfig::from_toml("[[models]]\npath = \"/x/SmolLM2-135M-Instruct.Q4_1.gguf\"\n")
        .unwrap_or_default();
    let cfg = raw.validate().map_err(|e| e.to_string());
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => unreachable!("{e}"),
    };
    assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(cfg.models[0].id, "smollm2-135m-instruct");
    assert_eq!(cfg.models[0].slots, 4);
    assert!(
        !cfg.models[0].mmap,
        "weights are read into memory unless asked"
    );
    let mapped = RawConfig::from_toml("[[models]]\npath = \"/x/m.gguf\"\nmmap = true\n")
        .map_err(|e| e.to_string())
        .and_then(|r| r.validate().map_err(|e| e.to_string()));
    assert!(mapped.is_ok_and(|c| c.models[0].mmap));
}

#[test]
fn example_configs_parse_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let raw = RawConfig::from_file(&path);
        assert!(raw.is_ok(), "{}: {:?}", path.display(), raw.err());
        let valid = raw
            .map_err(|e| e.to_string())
            .and_then(|r| r.validate().map_err(|e| e.to_string()));
        assert!(valid.is_ok(), "{}: {:?}", path.display(), valid.err());
        seen += 1;
    }
    assert!(seen >= 2, "expected example configs in {}", dir.display());
}

#[test]
fn deployments_name_a_store_file_and_their_nodes() -> Result<(), String> {
    let parse = |text: &str| {
        RawConfig::from_toml(text).and_then(|r| r.validate().map_err(|e| e.to_string()))
    };
    let c = parse("[[models]]\nmodel = \"m.Q4_1.gguf\"\nnodes = [\"a\", \"b\"]\n")?;
    assert_eq!(c.models[0].model, "m.Q4_1.gguf");
    assert_eq!(c.models[0].id, "m");
    assert_eq!(
        c.models[0].nodes,
        NodesWanted::Names(vec!["a".into(), "b".into()])
    );
    let c = parse("[[models]]\nmodel = \"m.gguf\"\nnodes = 3\n")?;
    assert_eq!(c.models[0].nodes, NodesWanted::Count(3));
    let c = parse("[[models]]\npath = \"/x/m.gguf\"\n")?;
    assert_eq!(
        (c.models[0].model.as_str(), &c.models[0].nodes),
        ("m.gguf", &NodesWanted::Count(1))
    );
    for (text, says) in [
        (
            "[[models]]\nmodel = \"../m.gguf\"\n",
            "`models[0].model` must be a file name",
        ),
        (
            "[[models]]\nmodel = \"m.gguf\"\npath = \"/m.gguf\"\n",
            "`models[0].model` and `path` are both set",
        ),
        (
            "[[models]]\nmodel = \"m.gguf\"\nnodes = 0\n",
            "`models[0].nodes` must be between 1 and 16",
        ),
        (
            "[[models]]\nmodel = \"m.gguf\"\nnodes = [\"a\", \"a\"]\n",
            "`models[0].nodes` names \"a\" twice",
        ),
        (
            "[[models]]\nmodel = \"m.gguf\"\nengine = \"mlx\"\n",
            "`models[0].engine` must be \"llama\" or \"upstream\"",
        ),
    ] {
        let err = parse(text).err().unwrap_or_default();
        assert!(err.starts_with(says), "{text}: {err}");
    }
    Ok(())
}

#[test]
fn a_model_path_must_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let raw = RawConfig {
        models: vec![ModelConfig {
            path: Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"/m/\xffx.gguf"))),
            ..ModelConfig::default()
        }],
        ..RawConfig::default()
    };
    let err = raw
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("`models[0].path` must be valid UTF-8"),
        "{err}"
    );
}

#[test]
fn upstreams_validate_with_defaults_and_name_mistakes() -> Result<(), String> {
    let parse = |text: &str| {
        RawConfig::from_toml(text).and_then(|r| r.validate().map_err(|e| e.to_string()))
    };
    let c = parse(
        "[[models]]\nid = \"u\"\nengine = \"upstream\"\nbase_url = \"http://h:1/v1/\"\napi_key_env = \"K\"\n",
    )?;
    assert!(c.models.is_empty());
    let u = &c.upstreams[0];
    assert_eq!(
        (
            u.id.as_str(),
            u.base_url.as_str(),
            u.upstream_model.as_str()
        ),
        ("u", "http://h:1/v1", "u")
    );
    assert_eq!(u.api_key, Some(KeySource::Env("K".into())));
    assert_eq!(u.health.probe_path.as_deref(), Some("/models"));
    assert_eq!(u.timeouts.total, Duration::from_secs(600));
    let up = "[[models]]\nid = \"u\"\nengine = \"upstream\"\nbase_url = \"http://h/v1\"\n";
    for (text, says) in [
        (
            format!("{up}threads = 2\n"),
            "`models[0].threads` is not used by `engine = \"upstream\"`",
        ),
        (
            "[[models]]\npath = \"/m.gguf\"\nbase_url = \"http://h\"\n".to_string(),
            "`models[0].base_url` is only for `engine = \"upstream\"`",
        ),
        (
            "[[models]]\nengine = \"upstream\"\nid = \"u\"\nbase_url = \"h:80\"\n".to_string(),
            "`models[0].base_url` must be an http:// or https:// URL, got \"h:80\"",
        ),
        (
            format!("{up}api_key_env = \"K\"\napi_key_file = \"/k\"\n"),
            "`models[0].api_key_env` and `api_key_file` are both set",
        ),
        (
            format!("{up}headers = {{ \"bad header\" = \"x\" }}\n"),
            "`models[0].headers` \"bad header\" is not a valid header name",
        ),
        (
            format!("{up}first_byte_timeout_ms = 9000\ntotal_timeout_ms = 100\n"),
            "`models[0].first_byte_timeout_ms` must not exceed `total_timeout_ms`",
        ),
        (
            format!("{up}fallbacks = [\"nope\"]\n"),
            "`models[0].fallbacks` names \"nope\", which no [[models]] entry defines",
        ),
        (
            format!("{up}fallbacks = [\"u\"]\n"),
            "`models[0].fallbacks` names the model itself",
        ),
        (
            format!("{up}[[aliases]]\nname = \"u\"\ntargets = [{{ model = \"u\" }}]\n"),
            "`aliases[0].name` \"u\" is already a model id or alias",
        ),
        (
            format!("{up}[[aliases]]\nname = \"a\"\ntargets = [{{ model = \"u\", weight = 0 }}]\n"),
            "`aliases[0].targets[0].weight` must be between 1 and 1000, got 0",
        ),
        (
            format!("{up}[[aliases]]\nname = \"a\"\npolicy = \"random\"\ntargets = [{{ model = \"u\" }}]\n"),
            "`aliases[0].policy` must be \"least_inflight\" or \"weighted_round_robin\"",
        ),
    ] {
        let err = parse(&text).err().unwrap_or_default();
        assert!(err.starts_with(says), "{text}: {err}");
    }
    let c = parse(&format!(
        "{up}[[models]]\npath = \"/x/m.gguf\"\nfallbacks = [\"u\"]\n[[aliases]]\nname = \"a\"\npolicy = \"weighted_round_robin\"\ntargets = [{{ model = \"u\", weight = 3 }}, {{ model = \"m\" }}]\n"
    ))?;
    assert_eq!(c.routing.fallbacks.get("m"), Some(&vec!["u".to_string()]));
    assert_eq!(c.routing.aliases[0].policy, Policy::WeightedRoundRobin);
    assert_eq!(
        c.routing.aliases[0].targets,
        vec![("u".to_string(), 3), ("m".to_string(), 1)]
    );
    Ok(())
}

#[test]
fn usage_section_defaults_and_errors() {
    let valid = |text: &str| {
        RawConfig::from_toml(text)
            .map_err(|e| e.to_string())
            .and_then(|r| r.validate().map_err(|e| e.to_string()))
    };
    let c = valid("");
    assert!(c.as_ref().is_ok_and(|c| c.usage.enabled
        && c.usage.database_url.is_none()
        && c.usage.retention_days == 30
        && c.usage.flush_rows == 256
        && !c.usage.user_metrics));
    let e = valid("[usage]\nflush_rows = 0\n").err().unwrap_or_default();
    assert!(
        e.contains("`usage.flush_rows`") && e.contains("got 0"),
        "{e}"
    );
    let e = valid("[usage]\ndatabase_url = \"mysql://u:secret@h/db\"\n")
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("`usage.database_url`") && !e.contains("secret"),
        "{e}"
    );
    let e = valid("[usage]\nretention = 3\n").err().unwrap_or_default();
    assert!(e.contains("retention"), "{e}");
    assert!(valid("[usage]\ndatabase_url = \"postgres://h/db\"\nretention_days = 1\n").is_ok());
}
