//! `gralora merge`: a PEFT adapter merged into its model, written as a Hugging Face snapshot
//! or, for a decoder loaded from a GGUF file, as a GGUF file llama.cpp runs.

use anyhow::Result;
use gralora_models::assets;
use gralora_models::gguf::GgmlType;
use gralora_models::source::{LoadedModel, ModelSource};

use crate::args::{GgufType, MergeArgs, MergeFormat};
use crate::usage;

pub fn run(args: MergeArgs) -> Result<()> {
    if args.format == MergeFormat::Snapshot && args.ty.is_some() {
        return Err(usage(
            "--type sets a GGUF file's matrix type; add --format gguf, or leave --type out",
        ));
    }
    if args.out.exists() {
        return Err(usage(format!(
            "{}: already exists; choose a new {} for the merged model",
            args.out.display(),
            if args.format == MergeFormat::Gguf {
                "file"
            } else {
                "directory"
            }
        )));
    }
    let device = burn::tensor::Device::flex();
    let source = ModelSource::resolve(&args.model, &assets::home())?;
    if args.format == MergeFormat::Gguf && !matches!(source, ModelSource::Gguf(_)) {
        return Err(usage(format!(
            "--format gguf carries the metadata and tokenizer of a .gguf base, and `{}` is a \
             Hugging Face snapshot; pass a .gguf file as --model, or merge to a snapshot and \
             convert it with llama.cpp's convert_hf_to_gguf.py",
            args.model
        )));
    }
    let mut loaded = LoadedModel::load(&source, &device)?;
    let report = loaded.model.load_adapter(&args.adapter)?;
    match args.format {
        MergeFormat::Snapshot => {
            loaded.model.write_snapshot(&source, &args.out)?;
            eprintln!(
                "merged {} adapted layers into {}",
                report.layers.len(),
                args.out.display()
            );
        }
        MergeFormat::Gguf => {
            let ty = match args.ty.unwrap_or(GgufType::F16) {
                GgufType::F32 => GgmlType::F32,
                GgufType::F16 => GgmlType::F16,
                GgufType::Q8_0 => GgmlType::Q8_0,
            };
            let written = loaded.model.write_gguf(&source, &args.out, ty)?;
            eprintln!(
                "merged {} adapted layers into {} ({} tensors, matrices as {ty:?}{}; {} metadata keys \
                 and the tokenizer carried over)",
                report.layers.len(),
                args.out.display(),
                written.tensors,
                if written.f16_fallback > 0 {
                    format!(
                        ", {} as F16 (rows not whole Q8_0 blocks)",
                        written.f16_fallback
                    )
                } else {
                    String::new()
                },
                written.metadata
            );
        }
    }
    Ok(())
}
