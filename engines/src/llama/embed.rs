//! The embedding loop: what an embedding host runs instead of the batch loop.
//! Many inputs go through one decode: each is its own sequence in the batch
//! (positions from 0, so a non-causal model like BERT sees only its own
//! tokens), up to `batch_tokens` tokens and `max_seqs` sequences. Requests
//! are served round robin, one input from each in turn, so a request of a
//! few inputs is not held up behind one of thousands. Each sequence is pooled
//! by the model's own pooling (llama.cpp) and L2-normalized here.

use super::batch::Command;
use super::protocol::{FromHost, RequestId};
use crate::{EmbedInput, EmbeddingInfo, Embeddings, EngineError};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::mpsc::{Receiver, SyncSender};

/// Sequences in one decode (the context's `n_seq_max`).
pub const MAX_SEQS: u32 = 64;
/// Tokens in one decode when the longest input is shorter than this.
const MIN_BATCH_TOKENS: u32 = 512;

/// The context an embedding host runs: embeddings on, the model's pooling
/// (mean when its GGUF names none, as for a decoder model), and one ubatch
/// that holds the longest input whole (a non-causal model must see all of
/// an input at once). Inputs may be as long as the model was trained for,
/// or `ctx_size` if that is smaller. Returns the batch size in tokens.
pub fn context_params(
    model: &LlamaModel,
    ctx_size: u32,
    threads: i32,
) -> (LlamaContextParams, EmbeddingInfo, usize) {
    let arch = model
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    let pooling = match model.meta_val_str(&format!("{arch}.pooling_type")) {
        Ok(_) => LlamaPoolingType::Unspecified,
        Err(_) => LlamaPoolingType::Mean,
    };
    let max_input = model.n_ctx_train().min(ctx_size).max(1);
    let batch = max_input.max(MIN_BATCH_TOKENS);
    let params = LlamaContextParams::default()
        .with_embeddings(true)
        .with_pooling_type(pooling)
        .with_n_ctx(NonZeroU32::new(batch))
        .with_n_batch(batch)
        .with_n_ubatch(batch)
        .with_n_seq_max(MAX_SEQS)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let info = EmbeddingInfo {
        dimensions: u32::try_from(model.n_embd()).unwrap_or(0),
        max_input_tokens: max_input,
    };
    (params, info, batch as usize)
}

struct Job {
    id: RequestId,
    inputs: Vec<Vec<LlamaToken>>,
    /// The next input to put in a batch.
    next: usize,
    vectors: Vec<Option<Vec<f32>>>,
    tokens: u32,
}

pub struct EmbedLoop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    info: EmbeddingInfo,
    batch_tokens: usize,
    batch: LlamaBatch<'static>,
    jobs: VecDeque<Job>,
    events: SyncSender<FromHost>,
    alive: bool,
}

impl<'m> EmbedLoop<'m> {
    /// `batch_tokens` is the context's `n_batch` = `n_ubatch` (≥ the longest input).
    pub fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        info: EmbeddingInfo,
        batch_tokens: usize,
        events: SyncSender<FromHost>,
    ) -> Self {
        Self {
            model,
            ctx,
            info,
            batch_tokens,
            batch: LlamaBatch::new(batch_tokens, 1),
            jobs: VecDeque::new(),
            events,
            alive: true,
        }
    }

    pub fn run(mut self, commands: Receiver<Command>) {
        while self.alive {
            if self.jobs.is_empty() {
                self.stats();
                match commands.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = commands.try_recv() {
                self.handle(cmd);
            }
            if self.alive && !self.jobs.is_empty() {
                self.step();
            }
        }
    }

    fn emit(&mut self, event: FromHost) {
        if self.events.send(event).is_err() {
            self.alive = false;
        }
    }

    fn stats(&mut self) {
        let slots_busy = u32::try_from(self.jobs.len()).unwrap_or(u32::MAX);
        self.emit(FromHost::Stats {
            slots_busy,
            kv_used_tokens: 0,
            kv_capacity_tokens: 0,
        });
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown => self.alive = false,
            Command::Cancel { id } => self.jobs.retain(|j| j.id != id),
            Command::Generate { id, .. } => self.emit(FromHost::Failed {
                id,
                error: EngineError::NotServed(
                    "this model serves embeddings only; use /v1/embeddings".into(),
                ),
            }),
            Command::Embed { id, inputs } => match self.job(id, inputs) {
                Ok(job) if job.inputs.is_empty() => self.finish(job),
                Ok(job) => self.jobs.push_back(job),
                Err(error) => self.emit(FromHost::Embedded {
                    id,
                    result: Err(error),
                }),
            },
        }
    }

    /// Tokenizes the texts (with the model's special tokens, e.g. BERT's
    /// [CLS] … [SEP]) and checks every input against the model's limits.
    fn job(&self, id: RequestId, inputs: Vec<EmbedInput>) -> Result<Job, EngineError> {
        let vocab = self.model.vocab();
        let n_vocab = vocab.n_tokens();
        let max = self.info.max_input_tokens;
        let mut tokenized = Vec::with_capacity(inputs.len());
        let mut total = 0u32;
        for (index, input) in inputs.into_iter().enumerate() {
            let tokens = match input {
                EmbedInput::Text(text) => vocab.tokenize(text.as_bytes(), true, false),
                EmbedInput::Tokens(ids) => {
                    if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= n_vocab) {
                        return Err(EngineError::InvalidInput(format!(
                            "input[{index}] has token id {bad}, but this model's vocabulary has ids 0 to {}",
                            n_vocab - 1
                        )));
                    }
                    ids.into_iter().map(LlamaToken).collect()
                }
            };
            if tokens.is_empty() {
                return Err(EngineError::InvalidInput(format!(
                    "input[{index}] has no tokens"
                )));
            }
            if tokens.len() > max as usize {
                return Err(EngineError::InputTooLong {
                    index,
                    tokens: tokens.len(),
                    max,
                });
            }
            total = total.saturating_add(u32::try_from(tokens.len()).unwrap_or(u32::MAX));
            tokenized.push(tokens);
        }
        Ok(Job {
            id,
            vectors: vec![None; tokenized.len()],
            inputs: tokenized,
            next: 0,
            tokens: total,
        })
    }

    /// One decode: inputs taken round robin from the queued requests.
    fn step(&mut self) {
        self.batch.clear();
        // (job id, input index) of each sequence in the batch, by sequence id.
        let mut seqs: Vec<(RequestId, usize)> = Vec::new();
        let mut used = 0usize;
        let mut progress = true;
        while progress && seqs.len() < MAX_SEQS as usize {
            progress = false;
            for job in self.jobs.iter_mut() {
                let Some(tokens) = job.inputs.get(job.next) else {
                    continue;
                };
                if used + tokens.len() > self.batch_tokens || seqs.len() >= MAX_SEQS as usize {
                    continue;
                }
                let seq = i32::try_from(seqs.len()).unwrap_or(0);
                if self.batch.add_sequence(tokens, seq, true).is_err() {
                    continue;
                }
                used += tokens.len();
                seqs.push((job.id, job.next));
                job.next += 1;
                progress = true;
            }
        }
        // A causal model keeps KV per sequence; every batch starts afresh.
        self.ctx.clear_kv_cache();
        let decoded = self.ctx.decode(&mut self.batch);
        if let Err(e) = decoded {
            let ids: Vec<RequestId> = seqs.iter().map(|(id, _)| *id).collect();
            self.fail(&ids, &format!("decode failed: {e}"));
            return;
        }
        for (seq, (id, index)) in seqs.into_iter().enumerate() {
            let vector = i32::try_from(seq)
                .ok()
                .and_then(|s| self.ctx.embeddings_seq_ith(s).ok())
                .map(normalized);
            let Some(vector) = vector else {
                self.fail(&[id], "the model gave no pooled embedding");
                continue;
            };
            if let Some(job) = self.jobs.iter_mut().find(|j| j.id == id) {
                if let Some(slot) = job.vectors.get_mut(index) {
                    *slot = Some(vector);
                }
            }
        }
        while let Some(pos) = self
            .jobs
            .iter()
            .position(|j| j.vectors.iter().all(Option::is_some))
        {
            if let Some(job) = self.jobs.remove(pos) {
                self.finish(job);
            }
        }
    }

    fn fail(&mut self, ids: &[RequestId], why: &str) {
        let failed: VecDeque<Job> = {
            let (gone, kept) = std::mem::take(&mut self.jobs)
                .into_iter()
                .partition(|j| ids.contains(&j.id));
            self.jobs = kept;
            gone
        };
        for job in failed {
            self.emit(FromHost::Embedded {
                id: job.id,
                result: Err(EngineError::Internal(why.to_string())),
            });
        }
    }

    fn finish(&mut self, job: Job) {
        let vectors = job.vectors.into_iter().flatten().collect();
        self.emit(FromHost::Embedded {
            id: job.id,
            result: Ok(Embeddings {
                vectors,
                prompt_tokens: job.tokens,
            }),
        });
    }
}

/// The vector scaled to length 1 (a zero vector stays zero).
fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::normalized;

    #[test]
    fn normalizes_to_unit_length() {
        let v = normalized(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalized(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
