//! `gralora merge`: a PEFT adapter merged into its model, written as a Hugging Face snapshot.

use anyhow::Result;
use gralora_models::assets;
use gralora_models::source::{LoadedModel, ModelSource};

use crate::args::MergeArgs;

pub fn run(args: MergeArgs) -> Result<()> {
    let device = burn::tensor::Device::flex();
    let source = ModelSource::resolve(&args.model, &assets::home())?;
    let mut loaded = LoadedModel::load(&source, &device)?;
    let report = loaded.model.load_adapter(&args.adapter)?;
    loaded.model.write_snapshot(&source, &args.out)?;
    eprintln!(
        "merged {} adapted layers into {}",
        report.layers.len(),
        args.out.display()
    );
    Ok(())
}
