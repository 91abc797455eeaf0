//! Continuous batching: one llama.cpp context, one sequence per slot. Each
//! step feeds what `plan.rs` picks within the budget `pace.rs` keeps steps
//! short with (a small prompt first, else the decoding sequences' last
//! sampled tokens in turn, or chunks of longer prompts), decodes once, and
//! samples each fed sequence with its own sampler. A slot keeps the KV of its last
//! conversation, so a follow-up turn that extends it decodes only the new part.
//! A request for `n` choices takes `n` slots: one decodes the prompt, and its
//! KV is copied to the others (`llama_memory_seq_cp`) before their first sample.

use super::choices::Choices;
use super::grammar::{FirstBytes, GrammarGate};
use super::protocol::{FromHost, RequestId};
use super::slot::{best_free_slot, Slot};
use crate::text::StopOutcome;
use crate::{Delta, EngineError, FinishReason, SamplingParams, TokenLogprob};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod choice;
mod pace;
mod plan;
mod step;

use pace::Pace;
use plan::Turn;

pub enum Command {
    Generate {
        id: RequestId,
        tokens: Vec<i32>,
        params: SamplingParams,
    },
    Cancel {
        id: RequestId,
    },
    /// Served by the embedding loop (`embed.rs`) of an embedding host.
    Embed {
        id: RequestId,
        inputs: Vec<crate::EmbedInput>,
    },
    Shutdown,
}

/// Tokens decoded per step across all sequences, at most (the pace sets fewer).
const BATCH_TOKENS: usize = 512;
const STATS_EVERY: Duration = Duration::from_millis(200);

pub struct BatchLoop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    slots: Vec<Slot>,
    /// Requests in flight: how their choices ended so far.
    requests: HashMap<RequestId, Choices>,
    ctx_size: usize,
    events: SyncSender<FromHost>,
    batch: LlamaBatch<'static>,
    clock: u64,
    /// Decode steps taken (a prompt's age is counted in them).
    steps: u64,
    last_stats: Instant,
    /// Tokens per step, learnt from how long steps take.
    pace: Pace,
    /// What the last step left to the next (see `plan.rs`).
    turn: Turn,
    alive: bool,
    /// Read from the vocabulary at the first grammar-constrained request.
    first_bytes: OnceCell<Arc<FirstBytes>>,
}

impl<'m> BatchLoop<'m> {
    pub fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        slots: u32,
        ctx_size: u32,
        events: SyncSender<FromHost>,
    ) -> Self {
        let slots = (0..slots)
            .map(|i| Slot {
                seq: i32::try_from(i).unwrap_or(0),
                kv: Vec::new(),
                active: None,
                last_used: 0,
            })
            .collect();
        Self {
            model,
            ctx,
            slots,
            requests: HashMap::new(),
            ctx_size: ctx_size as usize,
            events,
            batch: LlamaBatch::new(BATCH_TOKENS, 1),
            clock: 0,
            steps: 0,
            last_stats: Instant::now(),
            pace: Pace::new(BATCH_TOKENS),
            turn: Turn::default(),
            alive: true,
            first_bytes: OnceCell::new(),
        }
    }

    pub fn run(mut self, commands: Receiver<Command>) {
        while self.alive {
            if !self.any_active() {
                self.send_stats();
                match commands.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = commands.try_recv() {
                self.handle(cmd);
            }
            if self.alive && self.any_active() {
                self.step();
            }
            if self.last_stats.elapsed() >= STATS_EVERY {
                self.send_stats();
            }
        }
    }

    fn any_active(&self) -> bool {
        self.slots.iter().any(|s| s.active.is_some())
    }

    fn emit(&mut self, event: FromHost) {
        if self.events.send(event).is_err() {
            self.alive = false;
        }
    }

    fn send_stats(&mut self) {
        self.last_stats = Instant::now();
        let slots_busy = self.slots.iter().filter(|s| s.active.is_some()).count() as u32;
        let kv_used_tokens = self.slots.iter().map(|s| s.kv.len() as u64).sum();
        let kv_capacity_tokens = (self.ctx_size * self.slots.len()) as u64;
        self.emit(FromHost::Stats {
            slots_busy,
            kv_used_tokens,
            kv_capacity_tokens,
        });
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown => self.alive = false,
            Command::Cancel { id } => {
                self.requests.remove(&id);
                for slot in &mut self.slots {
                    if slot.active.as_ref().is_some_and(|a| a.id == id) {
                        slot.active = None;
                    }
                }
            }
            Command::Generate { id, tokens, params } => {
                tracing::trace!(id, prompt = tokens.len(), "generate received");
                if let Err(error) = self.admit(id, tokens, &params) {
                    self.emit(FromHost::Failed { id, error });
                }
            }
            Command::Embed { id, .. } => self.emit(FromHost::Embedded {
                id,
                result: Err(EngineError::NotServed(
                    "this model does not serve embeddings".into(),
                )),
            }),
        }
    }

    /// Puts a request in the free slot whose cached tokens share the longest
    /// prefix with it, and its other choices in the least recently used ones.
    fn admit(
        &mut self,
        id: RequestId,
        tokens: Vec<i32>,
        params: &SamplingParams,
    ) -> Result<(), EngineError> {
        let prompt: Vec<LlamaToken> = tokens.into_iter().map(LlamaToken).collect();
        if prompt.is_empty() {
            return Err(EngineError::Internal(
                "the prompt is empty after tokenization".into(),
            ));
        }
        if prompt.len() >= self.ctx_size {
            return Err(EngineError::Internal(format!(
                "the prompt has {} tokens; the context holds {}",
                prompt.len(),
                self.ctx_size
            )));
        }
        let n = params.n.max(1);
        let free = self.slots.iter().filter(|s| s.active.is_none()).count();
        if free < n as usize {
            return Err(EngineError::Unavailable(format!(
                "{n} choices need {n} free slots, {free} are free (admission control should prevent this)"
            )));
        }
        let (best, shared) = best_free_slot(&self.slots, &prompt).ok_or_else(|| {
            EngineError::Unavailable("no free slot (admission control should prevent this)".into())
        })?;
        // At least one prompt token must be decoded to get logits for the first sample.
        let reuse = shared.min(prompt.len() - 1);
        let seq = self.slots[best].seq;
        let removed = self
            .ctx
            .clear_kv_cache_seq(u32::try_from(seq).ok(), u32::try_from(reuse).ok(), None)
            .unwrap_or(false);
        let reuse = if removed {
            reuse
        } else {
            let _ = self
                .ctx
                .clear_kv_cache_seq(u32::try_from(seq).ok(), None, None);
            0
        };
        // One grammar gate per choice, built before any state changes.
        let mut gates = Vec::with_capacity(n as usize);
        for _ in 0..n {
            gates.push(match &params.grammar {
                Some(g) => {
                    let model = self.model;
                    let first = self
                        .first_bytes
                        .get_or_init(|| Arc::new(FirstBytes::of(model)));
                    Some(GrammarGate::new(model, g, first)?)
                }
                None => None,
            });
        }
        let mut gates = gates.into_iter().flatten();
        self.requests
            .insert(id, Choices::new(n as usize, prompt.len(), reuse));
        self.slots[best].kv.truncate(reuse);
        let first = self.start((id, 0), &prompt, reuse, None, params, gates.next());
        self.slots[best].active = Some(first);
        for index in 1..n {
            let Some((other, _)) = best_free_slot(&self.slots, &[]) else {
                break; // counted above: cannot happen
            };
            let seq = self.slots[other].seq;
            let _ = self
                .ctx
                .clear_kv_cache_seq(u32::try_from(seq).ok(), None, None);
            self.slots[other].kv.clear();
            let choice = self.start((id, index), &prompt, 0, Some(best), params, gates.next());
            self.slots[other].active = Some(choice);
        }
        Ok(())
    }

    fn on_token(&mut self, slot_idx: usize, token: LlamaToken, logprob: Option<TokenLogprob>) {
        let vocab = self.model.vocab();
        if vocab.is_eog(token) {
            self.finish(slot_idx, FinishReason::Stop);
            return;
        }
        let piece = vocab.token_to_piece(token, false, None);
        let ctx_size = self.ctx_size;
        let slot = &mut self.slots[slot_idx];
        let kv_len = slot.kv.len();
        let Some(active) = slot.active.as_mut() else {
            return;
        };
        active.generated += 1;
        active.pending_logprobs.extend(logprob);
        let text = active.holdback.push(&piece);
        let (out, stopped) = match active.stop.push(&text) {
            StopOutcome::Emit(s) => (s, false),
            StopOutcome::Stopped(s) => (s, true),
        };
        let (id, index) = (active.id, active.index);
        let done = active.generated >= active.max_tokens || kv_len + 1 >= ctx_size;
        if !stopped && !done {
            active.next = Some(token);
        }
        if !out.is_empty() {
            let logprobs = std::mem::take(&mut active.pending_logprobs);
            self.emit(FromHost::Delta {
                id,
                delta: Delta {
                    index,
                    text: out,
                    logprobs,
                },
            });
        }
        if stopped {
            self.finish_with(slot_idx, FinishReason::Stop, false);
        } else if done {
            self.finish(slot_idx, FinishReason::Length);
        }
    }

    fn finish(&mut self, slot_idx: usize, reason: FinishReason) {
        self.finish_with(slot_idx, reason, true);
    }

    /// Ends a choice, and its request with its last choice. `flush` releases
    /// held-back text (not after a stop matched, whose tokens' logprobs go too).
    fn finish_with(&mut self, slot_idx: usize, reason: FinishReason, flush: bool) {
        self.clock += 1;
        let clock = self.clock;
        let slot = &mut self.slots[slot_idx];
        slot.last_used = clock;
        let Some(mut active) = slot.active.take() else {
            return;
        };
        if let Some(grammar) = &active.grammar {
            let s = grammar.stats();
            tracing::debug!(
                tokens = s.tokens,
                rejected = s.rejected,
                tail = s.tail,
                full = s.full,
                checked = s.checked,
                "grammar-constrained choice finished"
            );
        }
        if flush {
            // A character cut at the end is dropped, never sent as U+FFFD.
            active.holdback.finish();
            let text = active.stop.finish();
            if !text.is_empty() || !active.pending_logprobs.is_empty() {
                self.emit(FromHost::Delta {
                    id: active.id,
                    delta: Delta {
                        index: active.index,
                        text,
                        logprobs: active.pending_logprobs,
                    },
                });
            }
        }
        let ended = self
            .requests
            .get_mut(&active.id)
            .and_then(|c| c.end(active.index, reason, active.generated));
        if let Some((reasons, usage)) = ended {
            self.requests.remove(&active.id);
            self.emit(FromHost::Finished {
                id: active.id,
                reasons,
                usage,
            });
        }
    }

    /// Ends the request in `slot_idx` with an error: all its choices stop.
    fn fail_request(&mut self, slot_idx: usize, message: &str) {
        let Some(id) = self.slots[slot_idx].active.as_ref().map(|a| a.id) else {
            return;
        };
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(|a| a.id == id) {
                slot.active = None;
            }
        }
        self.requests.remove(&id);
        self.emit(FromHost::Failed {
            id,
            error: EngineError::Internal(message.to_string()),
        });
    }

    fn fail_all(&mut self, message: &str) {
        tracing::error!("{message}");
        self.ctx.clear_kv_cache();
        self.requests.clear();
        let mut failed = Vec::new();
        for slot in &mut self.slots {
            slot.kv.clear();
            if let Some(active) = slot.active.take() {
                if !failed.contains(&active.id) {
                    failed.push(active.id);
                }
            }
        }
        for id in failed {
            self.emit(FromHost::Failed {
                id,
                error: EngineError::Internal(message.to_string()),
            });
        }
    }
}
