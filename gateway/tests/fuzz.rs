//! The fuzz harnesses (`fuzz_targets` in the gateway, engines and cluster
//! crates) under plain `cargo test`: each over its checked-in seed corpus
//! (`gateway/fuzz/seeds/TARGET`, regression inputs included) and a few
//! thousand deterministic mutations of it. A short stand-in for the long
//! libFuzzer runs (`bench/fuzz`), so a change that breaks a property fails
//! here first. A failing input is saved to a file whose path is printed;
//! `cargo +nightly fuzz run --fuzz-dir gateway/fuzz TARGET FILE` replays it.

use herd_cluster::fuzz_targets as cluster;
use herd_engines::fuzz_targets as engines;
use herd_gateway::fuzz_targets as gateway;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Mutated inputs per target (each harness takes microseconds).
const MUTANTS: usize = 10_000;

/// Bytes worth splicing into JSON and binary inputs.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"-0.0",
    b"4294967296",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\n",
    b"\r",
    b"\\",
    b"\xff",
    b"\xe2\x98",
    b"\"messages\"",
    b"\"content\"",
    b"\"stop\"",
    b"\"stream\"",
    b"\"type\"",
    b"\"text\"",
    b"\"op\"",
    b"\"ev\"",
    b"\"from\"",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"HERDTUN1",
    b"GGUF",
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..rng.random_range(1..=6) {
        let at = rng.random_range(0..=input.len());
        match rng.random_range(0..7) {
            0 if at < input.len() => input[at] ^= 1 << rng.random_range(0..8),
            1 if at < input.len() => input[at] = rng.random(),
            2 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            3 => {
                let end = rng.random_range(at..=input.len().min(at + 16));
                input.drain(at..end);
            }
            4 => {
                let end = rng.random_range(at..=input.len().min(at + 32));
                let copy = input[at..end].to_vec();
                input.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let end = rng.random_range(from..=other.len());
                input.splice(at..at, other[from..end].iter().copied());
            }
            _ => input.truncate(at),
        }
    }
}

/// Runs `harness` over the seeds of `target` and [`MUTANTS`] mutations of them.
fn run(target: &str, harness: fn(&[u8])) {
    let seeds = seeds(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    let mut rng = StdRng::seed_from_u64(0x4e5d);
    let mutants = (0..MUTANTS).map(|_| {
        let mut input = seeds[rng.random_range(0..seeds.len())].clone();
        let other = &seeds[rng.random_range(0..seeds.len())];
        mutate(&mut rng, &mut input, other);
        input
    });
    for input in seeds.iter().cloned().chain(mutants) {
        let passed = catch_unwind(AssertUnwindSafe(|| harness(&input))).is_ok();
        let path = std::env::temp_dir().join(format!("herd-fuzz-{target}-{}", input.len()));
        if !passed {
            let _ = std::fs::write(&path, &input);
        }
        assert!(
            passed,
            "{target} failed on the input saved in {}",
            path.display()
        );
    }
}

#[test]
fn chat_request() {
    run("chat_request", gateway::chat_request);
}

#[test]
fn completion_request() {
    run("completion_request", gateway::completion_request);
}

#[test]
fn plan_body() {
    run("plan_body", gateway::plan_body);
}

#[test]
fn sse_stream() {
    run("sse_stream", gateway::sse_stream);
}

#[test]
fn to_host_lines() {
    run("to_host_lines", engines::to_host_lines);
}

#[test]
fn from_host_lines() {
    run("from_host_lines", engines::from_host_lines);
}

#[test]
fn protocol_round_trip() {
    run("protocol_round_trip", engines::protocol_round_trip);
}

#[test]
fn token_text() {
    run("token_text", engines::token_text);
}

#[test]
fn cluster_wire() {
    run("cluster_wire", cluster::wire);
}

#[test]
fn peer_auth() {
    run("peer_auth", cluster::peer_auth);
}

#[test]
fn tunnel_preamble() {
    run("tunnel_preamble", cluster::tunnel_preamble);
}

#[test]
fn gguf_header() {
    run("gguf_header", cluster::gguf_header);
}

/// The seeds that are meant to be accepted are: the harnesses above would
/// pass vacuously if every input were refused.
#[test]
fn real_seeds_are_accepted() {
    use herd_gateway::openai::json::parse_body;
    use herd_gateway::openai::request::{ChatCompletionRequest, CompletionRequest};
    for (target, file) in [
        ("chat_request", "minimal.json"),
        ("chat_request", "all-params-stream.json"),
        ("chat_request", "open-webui.json"),
        ("chat_request", "unicode.json"),
        ("chat_request", "sampling.json"),
        ("chat_request", "tools.json"),
    ] {
        let body = seed(target, file);
        let valid =
            parse_body::<ChatCompletionRequest>(&body).and_then(herd_gateway::validate::chat);
        assert!(valid.is_ok(), "{file}: {valid:?}");
    }
    for file in [
        "minimal.json",
        "all-params.json",
        "batch.json",
        "tokens.json",
        "token-lists.json",
        "sampling.json",
    ] {
        let body = seed("completion_request", file);
        let valid =
            parse_body::<CompletionRequest>(&body).and_then(herd_gateway::validate::completion);
        assert!(valid.is_ok(), "{file}: {valid:?}");
    }
    let plan =
        serde_json::from_slice::<herd_gateway::deploy::plan::Plan>(&seed("plan_body", "plan.json"));
    assert!(plan.is_ok(), "{plan:?}");
    use herd_cluster::wire::{ClusterView, Gossip, Refusal};
    let wire = |f: &str| seed("cluster_wire", f);
    assert!(serde_json::from_slice::<Gossip>(&wire("gossip.json")).is_ok());
    assert!(serde_json::from_slice::<Gossip>(&wire("gossip-minimal.json")).is_ok());
    assert!(serde_json::from_slice::<ClusterView>(&wire("cluster-view.json")).is_ok());
    assert!(serde_json::from_slice::<Refusal>(&wire("refusal.json")).is_ok());
    assert!(
        serde_json::from_slice::<herd_cluster::spec::DeploySpec>(&wire("deploy-spec.json")).is_ok()
    );
    use herd_engines::llama::protocol::{FromHost, ToHost};
    for line in seed("to_host_lines", "session.jsonl")
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        assert!(serde_json::from_slice::<ToHost>(line).is_ok());
    }
    for line in seed("from_host_lines", "session.jsonl")
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        assert!(serde_json::from_slice::<FromHost>(line).is_ok());
    }
    let gguf = herd_cluster::gguf::read_facts(&seed_path("gguf_header", "tiny.gguf"));
    assert!(gguf.is_ok_and(|f| f.n_layers == 2), "tiny.gguf");
}

fn seed_path(target: &str, file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
        .join(file)
}

fn seed(target: &str, file: &str) -> Vec<u8> {
    std::fs::read(seed_path(target, file)).unwrap_or_default()
}
