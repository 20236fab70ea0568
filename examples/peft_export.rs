//! Write gralora-made adapters (random non-zero B) for MiniLM as PEFT directories, with gralora's
//! own embeddings of fixed sentences in `outputs.json`, for `scripts/peft_fixtures.py check DIR`.
//!
//! ```sh
//! cargo run --example peft_export -- /tmp/gralora-peft
//! ```

use std::path::PathBuf;

use burn::tensor::Device;
use gralora::{AdaptOptions, GraLoraConfig, Init, LoraConfig, Targets, attach_adapters, save_peft};
use gralora_models::{Bert, BertInput, TextTokenizer, assets};

const SENTENCES: [&str; 3] = [
    "A man is playing a guitar on stage.",
    "The stock market fell sharply on Tuesday.",
    "Rust programs are compiled ahead of time.",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/gralora-peft".into()),
    );
    let minilm = assets::dir(&assets::home(), assets::find("minilm")?);
    let device = Device::flex();
    let tok = TextTokenizer::from_file(minilm.join("tokenizer.json"))?;
    let enc: Vec<_> = SENTENCES
        .iter()
        .map(|s| tok.encode(s, true))
        .collect::<Result<_, _>>()?;
    let cases: Vec<(&str, AdaptOptions)> = vec![
        (
            "gralora_hybrid",
            AdaptOptions::new(
                GraLoraConfig::new(8, 2)
                    .with_hybrid_r(4)
                    .with_alpha(12.0)
                    .with_init(Init::Random),
                Targets::names(["query", "value", "intermediate.dense"]),
            ),
        ),
        (
            "gralora_k4",
            AdaptOptions::new(
                GraLoraConfig::new(16, 4).with_init(Init::Random),
                Targets::AllLinear,
            )
            .with_layers([0, 3]),
        ),
        (
            "lora_patterns",
            AdaptOptions::new(
                LoraConfig::new(4).with_alpha(8.0).with_init(Init::Random),
                Targets::names(["key", "dense"]),
            )
            .with_rank_for(r"layer\.1\.attention\.self\.key", 8)
            .with_alpha_for(r"layer\.2\.output\.dense", 3.0),
        ),
    ];
    for (name, options) in cases {
        let (_, mut bert) = Bert::from_dir(&minilm, &device)?;
        let report = attach_adapters(&mut bert, &options)?;
        let dir = out.join(name);
        save_peft(
            &mut bert,
            &dir,
            Some("sentence-transformers/all-MiniLM-L6-v2"),
        )?;
        let emb = bert.embed(&BertInput::from_encoded(&enc, 0, &device));
        let v: Vec<f32> = emb
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| format!("{e:?}"))?;
        let rows: Vec<&[f32]> = v.chunks(v.len() / SENTENCES.len()).collect();
        let json = serde_json::json!({ "sentences": SENTENCES, "embeddings": rows });
        std::fs::write(dir.join("outputs.json"), json.to_string())?;
        println!("{}: {} layers", dir.display(), report.layers.len());
    }
    Ok(())
}
