//! Fuzzed data readers (see `tests/common/fuzz.rs`): a user's files in every format (JSON Lines,
//! gzipped JSON Lines, JSON, CSV, TSV, Parquet, Arrow IPC) with the label and SFT readers on top,
//! and the built-in sources (GLUE's Arrow streams, the Rotten Tomatoes TSV corpus, SNLI's JSON
//! lines, the gzipped OLMo request files of BoolQ, the commonsense suite and GSM8K).

use std::path::Path;

use gralora_train::data::{self, Columns, SftColumns, table};

use super::fuzz_support::{fuzz, to_file};
use super::{fixtures, tmp_dir};

fn user(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("../user").join(name)).unwrap()
}

fn builtin(path: &str, keep: usize) -> Vec<u8> {
    let mut b = std::fs::read(fixtures().join(path)).unwrap();
    // The first lines of a long text file are seed enough and keep each input quick.
    if keep > 0 && b.len() > keep {
        let cut = b[..keep].iter().rposition(|&c| c == b'\n').unwrap_or(keep);
        b.truncate(cut + 1);
    }
    b
}

/// Every row of a user's file, then the readers that make examples of them.
fn read_user(path: &Path) -> gralora_train::Result<()> {
    for row in table::rows(path)? {
        row?;
    }
    let _ = data::read_labelled(path, None, 0.25, 1, &Columns::default());
    let _ = data::read_sft_file(path, &SftColumns::default());
    Ok(())
}

fn fuzz_user_format(ext: &str, seeds: &[&str]) {
    let dir = tmp_dir(&format!("fuzz-{}", ext.replace('.', "-")));
    let input = dir.join(format!("input.{ext}"));
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| user(s)).collect();
    fuzz(ext, &seeds, |bytes| {
        to_file(&input, bytes);
        read_user(&input)
    });
}

#[test]
fn fuzzed_json_lines_are_errors_not_crashes() {
    fuzz_user_format(
        "jsonl",
        &[
            "reviews.jsonl",
            "reviews_nested.jsonl",
            "sft_messages.jsonl",
        ],
    );
}

#[test]
fn fuzzed_gzipped_json_lines_are_errors_not_crashes() {
    fuzz_user_format("jsonl.gz", &["reviews.jsonl.gz"]);
    let dir = tmp_dir("fuzz-jsonl-in-gz");
    let input = dir.join("input.jsonl.gz");
    fuzz(
        "jsonl inside gzip",
        &[gunzip(&user("reviews.jsonl.gz"))],
        |bytes| {
            to_file(&input, &gzip(bytes));
            read_user(&input)
        },
    );
}

#[test]
fn fuzzed_json_files_are_errors_not_crashes() {
    fuzz_user_format("json", &["reviews_array.json", "sft_alpaca.json"]);
}

#[test]
fn fuzzed_csv_and_tsv_are_errors_not_crashes() {
    fuzz_user_format("csv", &["reviews.csv", "reviews_columns.csv", "scores.csv"]);
    fuzz_user_format("tsv", &["reviews.tsv", "pairs.tsv"]);
}

#[test]
fn fuzzed_parquet_files_are_errors_not_crashes() {
    fuzz_user_format("parquet", &["reviews.parquet", "sft_messages.parquet"]);
}

#[test]
fn fuzzed_arrow_files_are_errors_not_crashes() {
    fuzz_user_format("arrow", &["reviews.arrow"]);
    // The same rows in the IPC file format (footer, blocks), written by arrow-ipc.
    let dir = tmp_dir("fuzz-arrow-file");
    let seed = dir.join("reviews_file.arrow");
    ipc_file_of_stream(&fixtures().join("../user/reviews.arrow"), &seed);
    let input = dir.join("input.arrow");
    fuzz(
        "arrow file format",
        &[std::fs::read(&seed).unwrap()],
        |bytes| {
            to_file(&input, bytes);
            read_user(&input)
        },
    );
    let dir = tmp_dir("fuzz-glue");
    let input = dir.join("input.arrow");
    let seeds = [
        builtin(data::SST2_DEV, 0),
        builtin(data::MRPC_DEV, 0),
        builtin(data::RTE_DEV, 0),
    ];
    fuzz("glue arrow stream", &seeds, |bytes| {
        to_file(&input, bytes);
        data::read_arrow(&input)?;
        let sst2 = data::read_sst2_arrow(&input);
        let pairs = data::read_glue_pairs(&input);
        sst2.or(pairs).map(|_| ())
    });
}

#[test]
fn fuzzed_builtin_text_sources_are_errors_not_crashes() {
    let dir = tmp_dir("fuzz-builtin");
    let rt = dir.join("rt.txt");
    fuzz(
        "rotten tomatoes tsv",
        &[builtin(data::RT_FILE, 4096)],
        |bytes| {
            to_file(&rt, bytes);
            data::read_rotten_tomatoes(&rt).map(|_| ())
        },
    );
    let snli = dir.join("snli.jsonl");
    fuzz("snli jsonl", &[builtin(data::SNLI_TEST, 4096)], |bytes| {
        to_file(&snli, bytes);
        data::read_snli(&snli).map(|_| ())
    });
}

#[test]
fn fuzzed_request_files_are_errors_not_crashes() {
    let dir = tmp_dir("fuzz-requests");
    let input = dir.join("requests.jsonl.gz");
    let seeds = [
        builtin(data::BOOLQ_VAL, 0),
        builtin("commonsense/arc_easy/val_rc_5shot/requests.jsonl.gz", 0),
        builtin("commonsense/winogrande/val_rc_5shot/requests.jsonl.gz", 0),
        builtin("gsm8k/gold_bpb_5shot/requests.jsonl.gz", 0),
    ];
    fuzz("olmo requests jsonl.gz", &seeds, |bytes| {
        to_file(&input, bytes);
        let boolq = data::read_boolq(&input).map(|_| ());
        let mc = data::read_mc(&input).map(|_| ());
        let gsm = data::gsm8k::read(&input).map(|_| ());
        boolq.or(mc).or(gsm)
    });
    // Mutating compressed bytes mostly breaks the gzip checksum; mutate the JSON lines inside.
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| first_lines(gunzip(s), 8192)).collect();
    fuzz("olmo requests (jsonl inside gzip)", &seeds, |bytes| {
        to_file(&input, &gzip(bytes));
        let boolq = data::read_boolq(&input).map(|_| ());
        let mc = data::read_mc(&input).map(|_| ());
        let gsm = data::gsm8k::read(&input).map(|_| ());
        boolq.or(mc).or(gsm)
    });
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, bytes).unwrap();
    enc.finish().unwrap()
}

fn first_lines(mut b: Vec<u8>, keep: usize) -> Vec<u8> {
    if b.len() > keep {
        let cut = b[..keep].iter().rposition(|&c| c == b'\n').unwrap_or(keep);
        b.truncate(cut + 1);
    }
    b
}

fn ipc_file_of_stream(stream: &Path, out: &Path) {
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(stream).unwrap(), None)
            .unwrap();
    let schema = reader.schema();
    let mut writer =
        arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(out).unwrap(), &schema)
            .unwrap();
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.finish().unwrap();
}
