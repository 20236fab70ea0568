//! Supervised fine-tuning of a decoder on the user's own file (TRL's formats and alpaca, see
//! [`crate::data::user`]): conversations rendered with the model's chat template (or
//! `--chat-template`), the loss on completions and the assistant's turns only unless
//! `--train-on-prompt`; evaluation is the held-out loss per target token, its perplexity and the
//! next-token accuracy on those tokens; optionally a few greedy generations from held-out
//! prompts at the end.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use burn::train::SupervisedTraining;
use burn::train::metric::LossMetric;
use gralora_models::{ChatTemplate, Llama, Message, ModelSource, Sampler, TextTokenizer};

use super::multiple_choice::{
    CausalLm, LmBatch, LmBatching, LmItem, LmLoader, answer_log_probs, save_decoder,
};
use crate::data::{Items, SftExample, sft_items, subset_items};
use crate::error::{Result, TrainError};
use crate::trainer::{
    Batching, DECODER_TARGETS, DataSettings, EvalMetrics, LossGuard, Method, Report, RunNames,
    Session, TrainConfig, Workload, trainable,
};

/// How SFT examples become token sequences.
pub struct SftEncoder<'a> {
    /// The tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// The chat template (needed by conversations).
    pub template: Option<&'a ChatTemplate>,
    /// Loss on every token, not only completions and assistant turns.
    pub train_on_prompt: bool,
    /// Longest sequence; longer ones lose their end.
    pub max_len: usize,
}

/// What truncation and masking did to a set of examples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncation {
    /// Examples longer than `max_len`.
    pub truncated: usize,
    /// Tokens cut off them.
    pub tokens_lost: usize,
    /// Examples left with no target token (their completion was cut off entirely): dropped.
    pub dropped: usize,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} truncated to --max-len ({} tokens lost), {} dropped with no target token left",
            self.truncated, self.tokens_lost, self.dropped
        )
    }
}

impl SftEncoder<'_> {
    fn template(&self) -> Result<&ChatTemplate> {
        self.template.ok_or_else(|| {
            TrainError::Usage(format!(
                "{} has no chat template, and the data holds conversations (messages or alpaca rows); pass one with --chat-template FILE (a Jinja file or a tokenizer_config.json)",
                self.tokenizer.path().display()
            ))
        })
    }

    fn eos(&self) -> Option<u32> {
        self.tokenizer.eos.first().copied()
    }

    /// The full token sequence of `example` and which tokens carry loss, before truncation.
    pub fn encode_full(&self, example: &SftExample) -> Result<(Vec<u32>, Vec<bool>)> {
        let (ids, mask) = match example {
            SftExample::Text(text) => {
                let mut ids = self.tokenizer.encode(text, true)?.ids;
                ids.extend(self.eos());
                let mask = vec![true; ids.len()];
                (ids, mask)
            }
            SftExample::Completion { prompt, completion } => {
                let mut ids = self.tokenizer.encode(prompt, true)?.ids;
                let start = ids.len();
                ids.extend(self.tokenizer.encode(completion, false)?.ids);
                ids.extend(self.eos());
                let mask = (0..ids.len()).map(|i| i >= start).collect();
                (ids, mask)
            }
            SftExample::Chat(messages) => {
                let chat = self.template()?.encode(self.tokenizer, messages)?;
                (chat.ids, chat.assistant)
            }
        };
        let mask = if self.train_on_prompt {
            vec![true; ids.len()]
        } else {
            mask
        };
        Ok((ids, mask))
    }

    /// `example` tokenised and truncated to `max_len`, counted in `t`; `None` when no target
    /// token is left (counted as dropped).
    fn encode_one(&self, example: &SftExample, t: &mut Truncation) -> Result<Option<LmItem>> {
        let (mut ids, mut mask) = self.encode_full(example)?;
        if ids.len() > self.max_len {
            t.truncated += 1;
            t.tokens_lost += ids.len() - self.max_len;
            ids.truncate(self.max_len);
            mask.truncate(self.max_len);
        }
        let item = LmItem::masked(ids, &mask);
        if item.target_count() == 0 {
            t.dropped += 1;
            return Ok(None);
        }
        Ok(Some(item))
    }

    /// Tokenise `examples` (truncated to `max_len`), counting what truncation did.
    pub fn encode_all(&self, examples: &[SftExample]) -> Result<(Vec<LmItem>, Truncation)> {
        let mut t = Truncation::default();
        let mut items = Vec::with_capacity(examples.len());
        for e in examples {
            items.extend(self.encode_one(e, &mut t)?);
        }
        Ok((items, t))
    }

    /// [`Self::encode_all`] one example at a time, into memory or a spill file as `examples`
    /// are kept.
    pub fn encode_items(
        &self,
        examples: &Items<SftExample>,
    ) -> Result<(Items<LmItem>, Truncation)> {
        let mut t = Truncation::default();
        let items = examples.iter().filter_map(|e| {
            e.map_err(TrainError::from)
                .and_then(|e| self.encode_one(&e, &mut t))
                .transpose()
        });
        let items = examples.collect_like(items, LmBatching::tokens)?;
        Ok((items, t))
    }

    /// The prompt of a held-out example, for sampling: a conversation without its last
    /// assistant turn (with the generation prompt), or a completion's prompt. `None` for text.
    pub fn prompt(&self, example: &SftExample) -> Result<Option<(Vec<u32>, String)>> {
        Ok(match example {
            SftExample::Text(_) => None,
            SftExample::Completion { prompt, .. } => {
                Some((self.tokenizer.encode(prompt, true)?.ids, prompt.clone()))
            }
            SftExample::Chat(messages) => {
                let last = messages
                    .iter()
                    .rposition(|m| m.role == "assistant")
                    .unwrap_or(messages.len());
                let shown = messages[..last]
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(|m| m.content.clone())
                    .unwrap_or_default();
                let text = self.template()?.prompt(&messages[..last])?;
                let (ids, _) = self.tokenizer.encode_with_offsets(&text)?;
                Some((ids, shown))
            }
        })
    }
}

/// Pack `items` into sequences of at most `max_len` tokens (first fit, longest first; the order
/// is deterministic). Each packed sequence is its examples one after another, each keeping its
/// own target tokens and marked where it starts ([`LmItem::starts`]): the model runs each
/// example with attention confined to it and positions from 0, so the loss is the same
/// predictions as unpacked, in fewer, fuller rows.
pub fn pack(items: Vec<LmItem>, max_len: usize) -> Vec<LmItem> {
    let lens: Vec<usize> = items.iter().map(|i| i.ids.len()).collect();
    pack_bins(&lens, max_len)
        .iter()
        .map(|bin| join(bin.iter().map(|&i| &items[i]), max_len))
        .collect()
}

/// [`pack`] of items in memory or spilled, reading one packed sequence's examples at a time.
pub fn pack_items(items: &Items<LmItem>, max_len: usize) -> Result<Items<LmItem>> {
    let lens: Vec<usize> = (0..items.len()).map(|i| items.tokens(i)).collect();
    let packed = pack_bins(&lens, max_len).into_iter().map(|bin| {
        let members = items.fetch(&bin)?;
        Ok(join(members.iter(), max_len))
    });
    items.collect_like(packed, LmBatching::tokens)
}

/// Which examples (by index) each packed sequence holds: first fit, longest first. The first
/// sequence with room is found in a max-tree of the room left in every sequence (those not yet
/// opened have all `max_len`), so packing n examples takes O(n log n), not O(n²).
fn pack_bins(lens: &[usize], max_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let leaves = lens.len().max(1).next_power_of_two();
    let mut room = vec![max_len; 2 * leaves];
    let mut bins: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let need = lens[i];
        // The leftmost sequence with room: an open one, or else the next to open (an example
        // longer than `max_len` gets one of its own).
        let b = if room[1] >= need {
            let mut node = 1;
            while node < leaves {
                node = if room[2 * node] >= need {
                    2 * node
                } else {
                    2 * node + 1
                };
            }
            node - leaves
        } else {
            bins.len()
        };
        if b == bins.len() {
            bins.push(Vec::new());
        }
        bins[b].push(i);
        let mut node = b + leaves;
        room[node] = room[node].saturating_sub(need);
        while node > 1 {
            node /= 2;
            room[node] = room[2 * node].max(room[2 * node + 1]);
        }
    }
    bins
}

/// Examples one after another in one sequence, each marked where it starts.
fn join<'a>(members: impl Iterator<Item = &'a LmItem>, max_len: usize) -> LmItem {
    let mut bin = LmItem {
        ids: Vec::with_capacity(max_len),
        targets: Vec::new(),
        starts: Vec::new(),
    };
    for item in members {
        let offset = bin.ids.len();
        if offset > 0 {
            bin.starts.push(offset);
        }
        bin.ids.extend_from_slice(&item.ids);
        // An example's first token has nothing of its own to be predicted from: no loss.
        bin.targets.extend(
            item.targets
                .iter()
                .map(|r| r.start.max(1) + offset..r.end + offset)
                .filter(|r| !r.is_empty()),
        );
    }
    bin
}

/// Held-out loss per target token, its perplexity, and the next-token accuracy on the target
/// tokens, over `items` in batches of `batch_size`.
pub fn evaluate_lm(
    model: &Llama,
    items: &Items<LmItem>,
    batch_size: usize,
    device: &Device,
) -> Result<EvalMetrics> {
    let (mut nll, mut correct, mut tokens) = (0f64, 0usize, 0usize);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items.tokens(i));
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = items.fetch_ref(chunk)?;
        let refs: Vec<&LmItem> = batch.iter().map(|i| &**i).collect();
        let batch = LmBatch::new(&refs, device);
        let hidden = model.forward_hidden(batch.ids.clone(), Some(batch.mask.clone()), None);
        let [b, t, d] = hidden.dims();
        let picked: Tensor<2> = hidden
            .reshape([b * t, d])
            .select(0, batch.positions.clone());
        let logp = log_softmax(model.logits(picked), 1);
        let n = batch.rows.len();
        let best = logp.clone().argmax(1).reshape([n]);
        let hits = best.equal(batch.targets.clone()).float().sum();
        let gold = logp.gather(1, batch.targets.reshape([n, 1])).sum();
        let gold = gralora::io::read_f32(gold)?;
        let hits = gralora::io::read_f32(hits)?;
        nll -= f64::from(gold.first().copied().unwrap_or(f32::NAN));
        correct += hits.first().copied().unwrap_or(0.0) as usize;
        tokens += n;
    }
    let loss = nll / tokens.max(1) as f64;
    Ok(EvalMetrics {
        examples: items.len(),
        accuracy: correct as f64 / tokens.max(1) as f64,
        f1: None,
        loss,
        perplexity: Some(loss.exp()),
        pearson: None,
        spearman: None,
    })
}

/// Fine-tuning a decoder on the user's SFT file.
pub struct SftWorkload {
    name: String,
    eval_name: String,
    llama: Option<Llama>,
    tokenizer: TextTokenizer,
    template: Option<ChatTemplate>,
    source: ModelSource,
    batch_size: usize,
    train: Items<LmItem>,
    eval: Items<LmItem>,
    samples: Vec<(Vec<u32>, String)>,
    generated: Vec<Sample>,
}

/// A generation from a held-out prompt (`samples.json` in the run directory).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// The prompt (a conversation's last user turn).
    pub prompt: String,
    /// The greedy completion.
    pub completion: String,
}

impl SftWorkload {
    /// Read and tokenise the files of `data` for `config`.
    pub fn new(
        config: &TrainConfig,
        data: &DataSettings,
        llama: Llama,
        tokenizer: TextTokenizer,
        source: ModelSource,
        report: Report<'_>,
    ) -> Result<Self> {
        let template = match &data.chat_template {
            Some(p) => Some(ChatTemplate::from_file(p, &tokenizer)?),
            None => tokenizer.chat_template.clone(),
        };
        let (train, eval) = sft_items(
            &data.train,
            data.eval.as_deref(),
            data.eval_split,
            config.seed,
            &data.sft_columns(),
        )?;
        let train = subset_items(&train, config.max_train, config.seed, true);
        let eval = subset_items(&eval, config.max_eval, config.seed, false);
        let max_len = config.max_len.min(llama.max_len);
        let encoder = SftEncoder {
            tokenizer: &tokenizer,
            template: template.as_ref(),
            train_on_prompt: data.train_on_prompt,
            max_len,
        };
        let (mut train_items, t_train) = encoder.encode_items(&train)?;
        let examples = train_items.len();
        if data.packing {
            train_items = pack_items(&train_items, max_len)?;
        }
        let (eval_items, t_eval) = encoder.encode_items(&eval)?;
        if train_items.is_empty() || eval_items.is_empty() {
            return Err(TrainError::Data {
                path: data.train.clone(),
                msg: format!(
                    "no example keeps a target token within --max-len {max_len}; raise --max-len"
                ),
            });
        }
        let mut targets = 0;
        for item in train_items.iter() {
            targets += item?.target_count();
        }
        let tokens: usize = (0..train_items.len()).map(|i| train_items.tokens(i)).sum();
        let packed = if data.packing {
            format!(", packed into {} sequences", train_items.len())
        } else {
            String::new()
        };
        report(&format!(
            "{}: {examples} train examples ({tokens} tokens, {targets} with loss{packed}), {} held-out; train: {t_train}; held-out: {t_eval}",
            data.task_name(),
            eval_items.len()
        ));
        let mut samples = Vec::new();
        for e in eval.iter() {
            if samples.len() >= data.sample_prompts {
                break;
            }
            if let Some(p) = encoder.prompt(&e?)? {
                samples.push(p);
            }
        }
        Ok(Self {
            name: data.task_name(),
            eval_name: data.eval_name(),
            llama: Some(llama),
            tokenizer,
            template,
            source,
            batch_size: config.batch_size,
            train: train_items,
            eval: eval_items,
            samples,
            generated: Vec::new(),
        })
    }

    fn base(&self) -> Result<&Llama> {
        self.llama
            .as_ref()
            .ok_or_else(|| TrainError::Training("the decoder was already built".into()))
    }

    /// Greedy generations (at most 64 new tokens) from the held-out prompts.
    fn sample(&self, model: &Llama, device: &Device) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        for (ids, shown) in &self.samples {
            let mut sampler = Sampler::greedy();
            let room = model.max_len.saturating_sub(ids.len()).min(64);
            if room == 0 {
                continue;
            }
            let g = model.generate(ids, room, &mut sampler, &self.tokenizer.eos, device, |_| {})?;
            out.push(Sample {
                prompt: shown.clone(),
                completion: self.tokenizer.decode(&g.tokens)?.trim().to_string(),
            });
        }
        Ok(out)
    }
}

impl Workload for SftWorkload {
    type Model = Llama;
    type Batching = LmBatching;
    type Learner = CausalLm;

    fn default_targets(&self) -> &'static [&'static str] {
        DECODER_TARGETS
    }

    fn names(&self) -> RunNames {
        RunNames {
            task: self.name.clone(),
            train_split: self.name.clone(),
            eval_split: self.eval_name.clone(),
        }
    }

    fn baseline(&mut self, session: &Session<'_>) -> Result<Option<EvalMetrics>> {
        let m = evaluate_lm(self.base()?, &self.eval, self.batch_size, session.device)?;
        Ok(Some(m))
    }

    fn model(&mut self, method: Method) -> Result<Llama> {
        let llama = self
            .llama
            .take()
            .ok_or_else(|| TrainError::Training("the decoder was already built".into()))?;
        Ok(trainable(llama, method))
    }

    fn batching(&self, model: &Llama, device: &Device) -> LmBatching {
        LmBatching::for_device(model.max_len, device)
    }

    fn train_items(&mut self) -> Items<LmItem> {
        std::mem::replace(&mut self.train, Items::empty())
    }

    fn valid_loader(&self, batching: LmBatching, device: &Device) -> LmLoader {
        LmLoader::over(self.eval.clone(), self.batch_size, None, batching, device)
    }

    fn loss(&self, model: &Llama, batch: LmBatch) -> Tensor<1> {
        answer_log_probs(model, batch).mean().neg()
    }

    fn learner(&self, model: Llama, loss_scale: f64, guard: LossGuard) -> CausalLm {
        CausalLm::new(model, loss_scale, guard)
    }

    fn training(
        &self,
        dir: std::path::PathBuf,
        train: Arc<LmLoader>,
        valid: Arc<LmLoader>,
    ) -> SupervisedTraining<CausalLm> {
        SupervisedTraining::new(dir, train, valid).metrics((LossMetric::new(),))
    }

    fn trained(&self, learner: CausalLm) -> Llama {
        learner.model
    }

    fn evaluate(&mut self, model: &Llama, session: &Session<'_>) -> Result<EvalMetrics> {
        let m = evaluate_lm(model, &self.eval, self.batch_size, session.device)?;
        self.generated = self.sample(model, session.device)?;
        Ok(m)
    }

    fn save(&mut self, model: Llama, session: &Session<'_>) -> Result<()> {
        if !self.generated.is_empty() {
            crate::trainer::write_json(&session.out.join("samples.json"), &self.generated)?;
        }
        if let Some(t) = &self.template {
            gralora::io::write_atomic(
                &session.out.join("chat_template.jinja"),
                t.source().as_bytes(),
            )
            .map_err(|e| TrainError::io(session.out.join("chat_template.jinja"), e))?;
        }
        save_decoder(model, &self.tokenizer, &self.source, session)
    }
}

/// The chat prompt of one user message with `template`, as token ids.
pub fn chat_prompt(
    tokenizer: &TextTokenizer,
    template: &ChatTemplate,
    user: &str,
) -> Result<Vec<u32>> {
    let text = template.prompt(&[Message::new("user", user)])?;
    Ok(tokenizer.encode_with_offsets(&text)?.0)
}

/// The chat template a run directory saved, else the model's.
pub fn run_template(run: Option<&Path>, tokenizer: &TextTokenizer) -> Result<Option<ChatTemplate>> {
    if let Some(dir) = run {
        let path = dir.join("chat_template.jinja");
        if path.is_file() {
            return Ok(Some(ChatTemplate::from_file(&path, tokenizer)?));
        }
    }
    Ok(tokenizer.chat_template.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_every_example_and_its_targets_within_the_length() {
        let items = vec![
            LmItem::masked(vec![1, 2, 3, 4, 5], &[false, false, true, true, true]),
            LmItem::masked(vec![6, 7, 8], &[true, true, true]),
            LmItem::masked(vec![9, 10], &[false, true]),
            LmItem::masked(vec![11, 12, 13, 14], &[false, true, false, true]),
        ];
        let packed = pack(items.clone(), 8);
        // Longest first, first fit: [5 + 3], [4 + 2].
        assert_eq!(packed.len(), 2);
        assert_eq!(packed[0].ids, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(packed[1].ids, [11, 12, 13, 14, 9, 10]);
        // The same predictions: item 1's first token was never predicted and is not now.
        assert_eq!(packed[0].targets, [2..5, 6..8]);
        assert_eq!(packed[1].targets, [1..2, 3..4, 5..6]);
        assert_eq!(
            (&packed[0].starts[..], &packed[1].starts[..]),
            (&[5][..], &[4][..])
        );
        let before: usize = items.iter().map(LmItem::target_count).sum();
        let after: usize = packed.iter().map(LmItem::target_count).sum();
        assert_eq!(before, after);
        assert!(packed.iter().all(|p| p.ids.len() <= 8));
        // An example as long as the limit gets its own sequence.
        assert_eq!(pack(items, 5).len(), 3);
    }

    /// The definition of first fit, longest first: each example into the first sequence (in
    /// the order they were opened) it fits in, else a new one.
    fn first_fit_by_definition(lens: &[usize], max_len: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
        for i in order {
            match bins.iter_mut().find(|b| b.0 + lens[i] <= max_len) {
                Some(b) => {
                    b.0 += lens[i];
                    b.1.push(i);
                }
                None => bins.push((lens[i], vec![i])),
            }
        }
        bins.into_iter().map(|b| b.1).collect()
    }

    #[test]
    fn the_tree_search_packs_exactly_as_first_fit_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for case in 0..300 {
            let n = rng.random_range(0..200);
            let max_len = rng.random_range(1..64);
            // Some longer than the limit too (each then gets a sequence of its own).
            let lens: Vec<usize> = (0..n).map(|_| rng.random_range(1..max_len + 4)).collect();
            assert_eq!(
                pack_bins(&lens, max_len),
                first_fit_by_definition(&lens, max_len),
                "case {case}: max_len {max_len}, {lens:?}"
            );
        }
        // Many examples: the search is logarithmic, so this is quick.
        let lens: Vec<usize> = (0..200_000).map(|i| 1 + (i * 7919) % 500).collect();
        let bins = pack_bins(&lens, 512);
        assert_eq!(bins.iter().map(Vec::len).sum::<usize>(), 200_000);
        assert!(
            bins.iter()
                .all(|b| b.iter().map(|&i| lens[i]).sum::<usize>() <= 512)
        );
    }
}
