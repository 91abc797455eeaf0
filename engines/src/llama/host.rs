//! The engine host: a child process that owns one llama.cpp model and context.
//! Threads: two readers, one per connection to the gateway (commands in; they
//! only route, so a Generate or Cancel is never held up; prompts over 64 KiB
//! come on the second connection, so no command waits behind megabytes of
//! someone else's prompt on the wire), two prepare workers (template +
//! tokenize, see `prepare_pool`: never behind generation, small prompts never
//! behind big ones), the batch loop (owns the context), and a writer (events
//! out, on the first connection). When the gateway goes away the sockets
//! close and the host exits.

use super::batch::{BatchLoop, Command};
use super::embed::EmbedLoop;
use super::prepare::PromptLimit;
use super::prepare_pool::{Job, Lane, PrepareQueue, Preparer};
use super::protocol::{FromHost, ToHost};
use crate::{ModelInfo, ToolFormat};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::num::NonZeroU32;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    /// Unix socket the gateway listens on.
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Context per slot, in tokens.
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: u32,
    /// Map the model file (true) or read it into memory (false).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub mmap: bool,
    /// RPC servers (`127.0.0.1:PORT`, herd's tunnel ends) holding the later layers, in order.
    #[arg(long = "rpc")]
    pub rpc: Vec<String>,
    /// Layer counts: this process first, then one per `--rpc` server (e.g. `15,15`).
    #[arg(long, value_delimiter = ',')]
    pub split: Vec<u32>,
    /// Allow llama.cpp's repacked CPU weight layouts (always off for a split model).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cpu_repack: bool,
    /// Serve embeddings (`embed.rs`) instead of generating.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub embeddings: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("cannot create context: {0}")]
    Context(String),
    #[error("cannot reach the gateway: {0}")]
    Io(#[from] std::io::Error),
}

/// Bound on queued events; a full queue makes the batch loop wait for the socket.
const EVENT_QUEUE: usize = 4096;
const COMMAND_QUEUE: usize = 1024;

pub fn run(args: HostArgs) -> Result<(), HostError> {
    let backend = LlamaBackend::init().map_err(|e| HostError::Backend(e.to_string()))?;
    super::llama_log::capture(std::env::var_os("HERD_LLAMA_LOG").is_some());
    let model = load(&backend, &args)?;
    // The output layer is logged as layer n_layer; the repeating layers are what the plan splits.
    let n_layer = model.n_layer();
    let layout: Vec<_> = super::rpc::layout_from_log(&super::llama_log::take_layer_lines())
        .into_iter()
        .filter(|(_, r)| r.start < n_layer)
        .map(|(d, r)| (d, r.start..r.end.min(n_layer)))
        .collect();
    let template = usable_template(&model);
    let total_ctx = args.ctx_size.saturating_mul(args.slots);
    let threads = i32::try_from(args.threads).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total_ctx))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_seq_max(args.slots)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let (embed_params, embedding, embed_batch) =
        super::embed::context_params(&model, args.ctx_size, threads);
    let (params, embedding) = if args.embeddings {
        (embed_params, Some(embedding))
    } else {
        (params, None)
    };
    let ctx = model
        .new_context(&backend, params)
        .map_err(|e| HostError::Context(e.to_string()))?;

    let stream = UnixStream::connect(&args.socket)?;
    let reader = BufReader::new(stream.try_clone()?);
    // Accepted second: the gateway tells the two apart by their order.
    let bulk = BufReader::new(UnixStream::connect(&args.socket)?);
    let (event_tx, event_rx) = sync_channel::<FromHost>(EVENT_QUEUE);
    let (cmd_tx, cmd_rx) = sync_channel::<Command>(COMMAND_QUEUE);
    let limit = PromptLimit::of(&model, args.ctx_size);
    let info = ModelInfo {
        max_token_bytes: limit.max_token_bytes().and_then(|n| u32::try_from(n).ok()),
        ctx_size: args.ctx_size,
        slots: args.slots,
        has_chat_template: template.is_some(),
        n_params: model.n_params(),
        n_vocab: u32::try_from(model.n_vocab()).unwrap_or(0),
        layout: layout
            .into_iter()
            .map(|(device, layers)| crate::LayerDevice { device, layers })
            .collect(),
        embedding,
        tool_format: template
            .as_ref()
            .and_then(|t| t.to_str().ok())
            .map_or(ToolFormat::Hermes, ToolFormat::of_template),
    };
    let _ = event_tx.send(FromHost::Ready { info });
    let preparer = Preparer {
        model: &model,
        template: template.as_ref(),
        limit,
    };
    let queue = PrepareQueue::default();

    std::thread::scope(|scope| {
        scope.spawn(|| write_events(stream, event_rx));
        for lane in [Lane::Any, Lane::Small] {
            let (preparer, queue, events) = (&preparer, &queue, event_tx.clone());
            scope.spawn(move || preparer.work(queue, lane, &events));
        }
        for reader in [reader, bulk] {
            let (queue, refusals, cmds) = (&queue, event_tx.clone(), cmd_tx.clone());
            scope.spawn(move || read_commands(reader, queue, &cmds, &refusals));
        }
        drop(cmd_tx);
        match embedding {
            Some(info) => EmbedLoop::new(&model, ctx, info, embed_batch, event_tx).run(cmd_rx),
            None => BatchLoop::new(&model, ctx, args.slots, args.ctx_size, event_tx).run(cmd_rx),
        }
    });
    Ok(())
}

/// Loads the whole model here, or (with `--rpc`) layers `[0, split[0])` here
/// and the rest on the RPC servers, exactly as split.
fn load(backend: &LlamaBackend, args: &HostArgs) -> Result<LlamaModel, HostError> {
    // llama.cpp returns only "null result"; why it failed is in its log.
    let load_error = |message: String| HostError::Load {
        path: args.model.clone(),
        message: super::llama_log::take_first_error().unwrap_or(message),
    };
    if args.rpc.is_empty() && !args.cpu_repack {
        return super::rpc::load_raw(backend, &args.model, args.mmap, false, 0, &[], &[])
            .map_err(|e| load_error(e.to_string()));
    }
    if args.rpc.is_empty() {
        let params = LlamaModelParams::default().with_use_mmap(args.mmap);
        return LlamaModel::load_from_file(backend, &args.model, &params)
            .map_err(|e| load_error(e.to_string()));
    }
    let Some((&local, remote)) = args.split.split_first() else {
        return Err(load_error("--rpc needs --split".into()));
    };
    if remote.len() != args.rpc.len() {
        return Err(load_error(format!(
            "--split has {} remote counts for {} --rpc servers",
            remote.len(),
            args.rpc.len()
        )));
    }
    super::rpc::load_raw(
        backend,
        &args.model,
        args.mmap,
        false,
        local,
        &args.rpc,
        remote,
    )
    .map_err(|e| load_error(e.to_string()))
}

/// The model's template if llama.cpp can apply it; otherwise chat is refused
/// (with a clear error) while raw completions keep working.
pub fn usable_template(model: &LlamaModel) -> Option<LlamaChatTemplate> {
    let template = model.chat_template(None).ok()?;
    let probe = LlamaChatMessage::new("user".into(), "hi".into()).ok()?;
    model
        .apply_chat_template(&template, &[probe], true)
        .ok()
        .map(|_| template)
}

/// Routes each command of one connection: prompts to the prepare queue (a
/// full queue answers at once), the rest to the batch loop.
fn read_commands(
    reader: BufReader<UnixStream>,
    prepares: &PrepareQueue,
    cmds: &SyncSender<Command>,
    events: &SyncSender<FromHost>,
) {
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let msg = match serde_json::from_str::<ToHost>(&line) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("engine host: bad command from gateway: {e}");
                continue;
            }
        };
        let sent = match msg {
            ToHost::Prepare { id, input } => match prepares.push(Job { id, input }) {
                Ok(()) => true,
                Err((job, error)) => events
                    .send(FromHost::Prepared {
                        id: job.id,
                        result: Err(error),
                    })
                    .is_ok(),
            },
            ToHost::Generate { id, tokens, params } => {
                cmds.send(Command::Generate { id, tokens, params }).is_ok()
            }
            ToHost::Cancel { id } => cmds.send(Command::Cancel { id }).is_ok(),
            ToHost::Embed { id, inputs } => cmds.send(Command::Embed { id, inputs }).is_ok(),
        };
        if !sent {
            break;
        }
    }
    // The gateway closed the socket (or died): nothing left to serve.
    prepares.close();
    let _ = cmds.send(Command::Shutdown);
}

fn write_events(stream: UnixStream, events: Receiver<FromHost>) {
    let mut out = BufWriter::new(stream);
    while let Ok(first) = events.recv() {
        let mut next = Some(first);
        // Write everything already queued, then flush once.
        while let Some(ev) = next {
            if serde_json::to_writer(&mut out, &ev).is_err() || out.write_all(b"\n").is_err() {
                std::process::exit(0);
            }
            next = events.try_recv().ok();
        }
        if out.flush().is_err() {
            std::process::exit(0);
        }
    }
}
