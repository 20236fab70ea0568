//! Fuzzed model readers (see `tests/common/fuzz.rs`): GGUF (header, metadata, tensor directory
//! and every block format, then the Llama built from it), safetensors, a snapshot's
//! `config.json`, and PEFT's `adapter_config.json` loaded onto a model.

use super::fuzz_support::{fuzz, to_file};
use super::*;

/// A GGUF with one tensor of every block format gralora reads, metadata of every kind, an array.
fn quantized_gguf(path: &Path) {
    let mut rng = Rng::new(11);
    let block = |per: usize, bytes: usize, blocks: usize, rng: &mut Rng| -> Vec<u8> {
        let _ = per;
        (0..bytes * blocks)
            .map(|i| {
                // Keep the f16 scales finite and small.
                if i % bytes < 2 {
                    if i % 2 == 0 { 0x00 } else { 0x2c }
                } else {
                    (rng.vec(1)[0] * 127.0) as i8 as u8
                }
            })
            .collect()
    };
    let tensors = vec![
        (
            "q4_0".to_string(),
            vec![64, 2],
            2u32,
            block(32, 18, 4, &mut rng),
        ),
        (
            "q4_1".to_string(),
            vec![64, 2],
            3,
            block(32, 20, 4, &mut rng),
        ),
        (
            "q5_0".to_string(),
            vec![64, 2],
            6,
            block(32, 22, 4, &mut rng),
        ),
        (
            "q5_1".to_string(),
            vec![64, 2],
            7,
            block(32, 24, 4, &mut rng),
        ),
        (
            "q8_0".to_string(),
            vec![64, 2],
            8,
            block(32, 34, 4, &mut rng),
        ),
        ("f16".to_string(), vec![8, 4], 1, block(1, 2, 32, &mut rng)),
        (
            "bf16".to_string(),
            vec![8, 4],
            30,
            block(1, 2, 32, &mut rng),
        ),
        ("f32".to_string(), vec![4, 4], 0, f32_bytes(&rng.vec(16))),
    ];
    let meta = [
        ("general.architecture", Meta::Str("llama")),
        ("general.name", Meta::Str("fuzz seed")),
        ("llama.block_count", Meta::U32(1)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
    ];
    write_gguf(path, &meta, &tensors);
}

fn read_gguf(path: &Path) -> gralora_models::Result<()> {
    let file = GgufFile::open(path)?;
    let mut names: Vec<String> = file.tensors.keys().cloned().collect();
    names.sort();
    for name in &names {
        let _ = file.dequantize(name);
    }
    let _ = file.meta_str("general.architecture");
    let _ = file.meta_u64("llama.block_count");
    let _ = gralora_models::TextTokenizer::from_gguf(&file);
    if file.meta_str("general.architecture").is_ok()
        && file.tensors.contains_key("token_embd.weight")
    {
        Llama::from_gguf(file, &Device::flex())?;
    }
    Ok(())
}

#[test]
fn fuzzed_gguf_files_are_errors_not_crashes() {
    let dir = tmp_dir("fuzz-gguf");
    let (a, b) = (dir.join("llama.gguf"), dir.join("quant.gguf"));
    tiny_llama_gguf(&a, &tiny_llama_weights());
    quantized_gguf(&b);
    let seeds = vec![std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()];
    let input = dir.join("input.gguf");
    fuzz("gguf", &seeds, |bytes| {
        to_file(&input, bytes);
        read_gguf(&input)
    });
}

#[test]
fn fuzzed_safetensors_files_are_errors_not_crashes() {
    let dir = tmp_dir("fuzz-safetensors");
    let seed = dir.join("seed.safetensors");
    write_safetensors(&seed, &tiny_llama_weights());
    let input = dir.join("input.safetensors");
    fuzz(
        "safetensors",
        &[std::fs::read(&seed).unwrap()],
        |bytes| -> gralora_models::Result<()> {
            to_file(&input, bytes);
            let file = SafetensorsFile::open(&input)?;
            let mut names = gralora_models::weights::TensorSource::names(&file);
            names.sort();
            for n in names {
                gralora_models::weights::TensorSource::read(&file, &n)?;
            }
            Ok(())
        },
    );
}

#[test]
fn fuzzed_config_json_is_an_error_not_a_crash() {
    let dir = tmp_dir("fuzz-config");
    write_safetensors(&dir.join("model.safetensors"), &tiny_llama_weights());
    let device = Device::flex();
    fuzz("config.json", &[TINY_LLAMA.as_bytes().to_vec()], |bytes| {
        to_file(&dir.join("config.json"), bytes);
        Llama::from_dir(&dir, &device).map(|_| ())
    });
}

#[test]
fn fuzzed_adapter_configs_are_errors_not_crashes() {
    let dir = tmp_dir("fuzz-adapter-config");
    std::fs::write(dir.join("config.json"), TINY_LLAMA).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tiny_llama_weights());
    let device = Device::flex();
    let mut seeds = Vec::new();
    let mut adapter_dirs = Vec::new();
    let options = [
        AdaptOptions::new(LoraConfig::new(4), Targets::names(["q_proj", "up_proj"]))
            .with_rank_for(r"layers\.1\.mlp\.up_proj", 8),
        AdaptOptions::new(
            GraLoraConfig::new(4, 2),
            Targets::names(["q_proj", "v_proj"]),
        ),
    ];
    for (i, opts) in options.iter().enumerate() {
        let (_, mut model) = Llama::from_dir(&dir, &device).unwrap();
        attach_adapters(&mut model, opts).unwrap();
        let out = dir.join(format!("adapter{i}"));
        gralora::save_peft(&mut model, &out, None).unwrap();
        seeds.push(std::fs::read(out.join("adapter_config.json")).unwrap());
        adapter_dirs.push(out);
    }
    // The fuzzed config goes beside the tensors of the seed of its kind.
    fuzz("adapter_config.json", &seeds, |bytes| {
        let gralora = bytes.windows(7).any(|w| w == b"GRALORA");
        let target = &adapter_dirs[usize::from(gralora)];
        let scratch = dir.join("input");
        let _ = std::fs::create_dir_all(&scratch);
        std::fs::copy(
            target.join("adapter_model.safetensors"),
            scratch.join("adapter_model.safetensors"),
        )
        .unwrap();
        to_file(&scratch.join("adapter_config.json"), bytes);
        let (_, mut model) = Llama::from_dir(&dir, &device).unwrap();
        gralora::load_peft(&mut model, &scratch).map(|_| ())
    });
}

/// The harness itself: a reader that trusts a length field, and one that panics on a bad byte,
/// are both caught (so the targets above passing means something).
#[test]
fn the_fuzz_harness_catches_a_trusted_length_field_and_a_panic() {
    let seed = vec![vec![4u8, 0, 0, 0, 1, 2, 3, 4]];
    let trusting = std::panic::catch_unwind(|| {
        fuzz("trusts-length", &seed, |bytes| -> Result<(), String> {
            let word: [u8; 4] = bytes.get(..4).ok_or("short")?.try_into().unwrap();
            let len = u32::from_le_bytes(word) as usize % (1 << 29);
            std::hint::black_box(Vec::<u8>::with_capacity(len));
            Ok(())
        })
    });
    let msg = panic_text(trusting.expect_err("a 512 MiB reservation must be caught"));
    assert!(msg.contains("an allocation of"), "{msg}");

    let panicking = std::panic::catch_unwind(|| {
        fuzz("panics", &seed, |bytes| -> Result<(), String> {
            assert!(bytes.len() >= 8, "short input");
            Ok(())
        })
    });
    let msg = panic_text(panicking.expect_err("a panic must be caught"));
    assert!(msg.contains("short input"), "{msg}");
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
