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
            "`models[0].engine` must be \"llama\"",
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
