//! One choice's start in the batch loop: its sampler, the prompt KV it
//! shares with the request's first choice, and its tokens' logprobs.

use super::BatchLoop;
use crate::llama::grammar::GrammarGate;
use crate::llama::protocol::RequestId;
use crate::llama::sampler;
use crate::llama::slot::Active;
use crate::text::{StopFilter, Utf8Holdback};
use crate::{SamplingParams, TokenLogprob, TopLogprob};
use llama_cpp_2::token::LlamaToken;

impl BatchLoop<'_> {
    pub(super) fn start(
        &self,
        (id, index): (RequestId, u32),
        prompt: &[LlamaToken],
        fed: usize,
        shares_prompt_of: Option<usize>,
        params: &SamplingParams,
        grammar: Option<GrammarGate>,
    ) -> Active {
        Active {
            id,
            index,
            prompt: prompt.to_vec(),
            fed,
            cached: fed,
            shares_prompt_of,
            sampler: sampler::build(params, self.model.n_vocab(), prompt, index),
            logprobs: params.logprobs,
            grammar,
            pending_logprobs: Vec::new(),
            holdback: Utf8Holdback::default(),
            stop: StopFilter::new(params.stop.clone()),
            generated: 0,
            max_tokens: params.max_tokens,
            next: None,
            logits_at: None,
            arrived_at: self.steps,
        }
    }

    /// Gives every choice waiting for its request's prompt the KV and the
    /// logits of the slot that has just decoded it.
    pub(super) fn share_prompts(&mut self) {
        for waiting in 0..self.slots.len() {
            let Some(from) = self.slots[waiting]
                .active
                .as_ref()
                .and_then(|a| a.shares_prompt_of)
            else {
                continue;
            };
            let Some((idx, kv)) = self.slots.get(from).and_then(|s| {
                let a = s.active.as_ref()?;
                let done = a.fed == a.prompt.len() && a.generated == 0;
                Some((a.logits_at.filter(|_| done)?, s.kv.clone()))
            }) else {
                continue;
            };
            let (src, dst) = (self.slots[from].seq, self.slots[waiting].seq);
            let _ = self
                .ctx
                .clear_kv_cache_seq(u32::try_from(dst).ok(), None, None);
            if let Err(e) = self.ctx.copy_kv_cache_seq(src, dst, None, None) {
                self.fail_all(&format!("cannot share the prompt's KV: {e}"));
                return;
            }
            let slot = &mut self.slots[waiting];
            slot.kv = kv;
            if let Some(a) = slot.active.as_mut() {
                a.fed = a.prompt.len();
                a.shares_prompt_of = None;
                a.logits_at = Some(idx);
            }
        }
    }

    /// The sampled token's log-probability and the `top` most likely tokens at `idx`.
    pub(super) fn logprob(&self, idx: i32, token: LlamaToken, top: u32) -> TokenLogprob {
        let vocab = self.model.vocab();
        let bytes = |id: i32| vocab.token_to_piece(LlamaToken(id), false, None);
        let (logprob, top) = sampler::logprobs(self.ctx.get_logits_ith(idx), token.0, top as usize);
        TokenLogprob {
            bytes: bytes(token.0),
            logprob,
            top: top
                .into_iter()
                .map(|(id, logprob)| TopLogprob {
                    bytes: bytes(id),
                    logprob,
                })
                .collect(),
        }
    }
}
