//! Tokenizers through Hugging Face's `tokenizers` crate: from `tokenizer.json`, or rebuilt from a
//! GGUF file's vocabulary and merges (byte-level BPE, as llama.cpp's `gpt2` tokenizer model).

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};

/// Token ids of one text (or text pair), with token types and attention mask.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment ids (0 for the first text, 1 for the second).
    pub type_ids: Vec<u32>,
}

/// A token's byte range `(start, end)` in the text it came from.
pub type Offsets = (usize, usize);

/// A tokenizer plus the special tokens a model needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// End-of-sequence token(s): generation stops at any of them.
    pub eos: Vec<u32>,
    /// Whether a BOS token is prepended to prompts.
    pub add_bos: bool,
    /// The model's chat template, when it ships one.
    pub chat_template: Option<ChatTemplate>,
}

impl TextTokenizer {
    fn err(&self, msg: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            msg: msg.to_string(),
        }
    }

    /// Load a `tokenizer.json`. Fixed padding and truncation baked into the file are turned off:
    /// batches are padded by the caller, with an attention mask.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(ModelError::Tokenizer {
                path,
                msg: "file not found (a Hugging Face snapshot needs tokenizer.json next to config.json)"
                    .into(),
            });
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = find(&["<s>", "<|begin_of_text|>", "<|im_start|>"]);
        let eos = find(&["</s>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>"])
            .into_iter()
            .collect();
        Ok(Self {
            inner,
            path,
            bos,
            eos,
            add_bos: false,
            chat_template: None,
        })
    }

    /// Rebuild the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`, model `gpt2`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let err = |msg: String| ModelError::Tokenizer {
            path: path.clone(),
            msg,
        };
        let model = file.meta_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported (only `gpt2`, byte-level BPE)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let items = file
                .meta(key)?
                .as_array()
                .ok_or_else(|| err(format!("`{key}` is not an array")))?;
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(err(format!("merge `{m}` is not two tokens"))),
            })
            .collect::<Result<_>>()?;
        let types: Vec<u64> = match file.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("building BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre = file
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        // llama.cpp's `smollm`/`starcoder`-style pre-tokenizers split digits one by one first.
        if matches!(pre, "smollm" | "starcoder" | "refact") {
            inner.with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])));
        } else {
            inner.with_pre_tokenizer(Some(byte_level));
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (type 3) are matched whole, before BPE, and skipped when decoding.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |key: &str| {
            file.metadata
                .get(key)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        };
        let add_bos = matches!(
            file.metadata.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let mut tokenizer = Self {
            inner,
            path,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            add_bos,
            chat_template: None,
        };
        if let Some(source) = file
            .metadata
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
        {
            let text = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
            let (bos, eos) = (text(tokenizer.bos), text(tokenizer.eos.first().copied()));
            tokenizer.chat_template = Some(ChatTemplate::new(source, file.path(), bos, eos)?);
        }
        Ok(tokenizer)
    }

    /// The file the tokenizer came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; `special` adds the model's special tokens
    /// (`[CLS] … [SEP]` for BERT, BOS for decoders that want it).
    pub fn encode(&self, text: &str, special: bool) -> Result<Encoded> {
        let enc = self.inner.encode(text, special).map_err(|e| self.err(e))?;
        let mut ids = enc.get_ids().to_vec();
        let mut type_ids = enc.get_type_ids().to_vec();
        if special
            && self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
            type_ids.insert(0, 0);
        }
        Ok(Encoded { ids, type_ids })
    }

    /// Token ids of `text` without added special tokens, with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Offsets>)> {
        let enc = self.inner.encode(text, false).map_err(|e| self.err(e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Token ids of a text pair (`[CLS] a [SEP] b [SEP]` for BERT).
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<Encoded> {
        let enc = self.inner.encode((a, b), true).map_err(|e| self.err(e))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Truncate every encoding to at most `max_len` tokens, special tokens included (pairs lose
    /// tokens from the longer text first, as Hugging Face's `longest_first`); `None` turns it off.
    pub fn set_max_len(&mut self, max_len: Option<usize>) -> Result<()> {
        let params = max_len.map(|max_length| tokenizers::TruncationParams {
            max_length,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            ..Default::default()
        });
        let result = self.inner.with_truncation(params).map(|_| ());
        result.map_err(|e| self.err(e))
    }

    /// Text of token ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.err(e))
    }

    /// The text one token stands for (special tokens shown as themselves).
    pub fn token_text(&self, id: u32) -> String {
        match self.inner.decode(&[id], false) {
            Ok(s) => s,
            Err(_) => self.inner.id_to_token(id).unwrap_or_default(),
        }
    }

    /// Write the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.inner.to_string(true).map_err(|e| self.err(e))?;
        crate::weights::write_atomic(path, text.as_bytes())
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
