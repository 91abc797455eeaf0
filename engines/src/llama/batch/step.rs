//! One decode step: what `plan.rs` picks within the budget `pace.rs` keeps
//! steps short with, fed into the batch, decoded once, and each fed sequence
//! sampled (through its grammar, if it has one).

use super::pace::StepClock;
use super::plan::{plan, Want};
use super::BatchLoop;

impl BatchLoop<'_> {
    /// One decode: what [`plan`] picks, within the [`Pace`]'s budget.
    pub(super) fn step(&mut self) {
        let clock = StepClock::start();
        self.batch.clear();
        let wants: Vec<Want> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let a = s.active.as_ref()?;
                let own_prompt = a.shares_prompt_of.is_none();
                Some(Want {
                    slot,
                    decode: a.next.is_some(),
                    prompt_left: if own_prompt {
                        a.prompt.len().saturating_sub(a.fed)
                    } else {
                        0
                    },
                    prompt_started: a.fed > a.cached,
                    prompt_len: a.prompt.len(),
                    age: self.steps.saturating_sub(a.arrived_at),
                })
            })
            .collect();
        let budget = self.pace.budget();
        let plan = plan(&wants, budget, self.turn);
        self.turn = plan.next;
        for &(slot, n) in &plan.prompts {
            self.feed_prompt(slot, n);
        }
        for &slot in &plan.decodes {
            self.feed_next(slot);
        }
        let fed = usize::try_from(self.batch.n_tokens()).unwrap_or(0);
        if fed == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            self.fail_all(&format!("llama_decode failed: {e}"));
            return;
        }
        self.clock += 1;
        self.steps += 1;
        self.share_prompts();
        for i in 0..self.slots.len() {
            let Some(active) = self.slots[i].active.as_mut() else {
                continue;
            };
            let Some(idx) = active.logits_at.take() else {
                continue;
            };
            let mut token = active.sampler.sample(&self.ctx, idx);
            if let Some(grammar) = active.grammar.as_mut() {
                match grammar.constrain(&self.ctx, idx, token, &mut active.sampler) {
                    Some(allowed) => token = allowed,
                    None => {
                        self.fail_request(i, "the output grammar allows no next token");
                        continue;
                    }
                }
            }
            active.sampler.accept(token);
            let logprob = active.logprobs.map(|top| self.logprob(idx, token, top));
            self.on_token(i, token, logprob);
        }
        let wall = clock.wall_time();
        tracing::trace!(
            kind = ?plan.next.last,
            prompts = plan.prompts.len(),
            decodes = plan.decodes.len(),
            fed,
            budget,
            wall_ms = wall.as_secs_f64() * 1e3,
            own_ms = clock.own_time().as_secs_f64() * 1e3,
            "step"
        );
        self.pace.observe(fed, budget, wall);
    }

    /// Adds the next `n` tokens of the prompt in `slot`; its last one asks for logits.
    fn feed_prompt(&mut self, slot_idx: usize, n: usize) {
        let slot = &mut self.slots[slot_idx];
        let Some(active) = slot.active.as_mut() else {
            return;
        };
        let end = (active.fed + n).min(active.prompt.len());
        for i in active.fed..end {
            let last = i + 1 == active.prompt.len();
            let idx = self.batch.n_tokens();
            if self
                .batch
                .add(active.prompt[i], slot.kv.len() as i32, &[slot.seq], last)
                .is_err()
            {
                break;
            }
            if last {
                active.logits_at = Some(idx);
            }
            slot.kv.push(active.prompt[i]);
            active.fed += 1;
        }
    }

    /// Adds the token last sampled in `slot`, asking for its logits.
    fn feed_next(&mut self, slot_idx: usize) {
        let slot = &mut self.slots[slot_idx];
        let Some(active) = slot.active.as_mut() else {
            return;
        };
        let Some(token) = active.next.take() else {
            return;
        };
        let idx = self.batch.n_tokens();
        if self
            .batch
            .add(token, slot.kv.len() as i32, &[slot.seq], true)
            .is_err()
        {
            active.next = Some(token);
            return;
        }
        active.logits_at = Some(idx);
        slot.kv.push(token);
    }
}
