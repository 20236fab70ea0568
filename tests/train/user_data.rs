//! Your own data: every format and column option read to the same examples (files written by
//! scripts/user_data_fixtures.py with Python's json/csv/gzip and pyarrow), SFT rows in TRL's and
//! alpaca's formats, chat templates against transformers' `apply_chat_template` (token ids,
//! generation prompt, assistant-token mask), bad files as one-line errors naming file, line and
//! field, and runs: a classifier on string labels reloaded by `eval` and `infer`, SmolLM2 SFT.

use std::path::{Path, PathBuf};

use gralora_models::{ChatTemplate, Message, TextTokenizer};
use gralora_train::data::{self, Columns, SftColumns, SftExample, read_labelled, read_sft};
use gralora_train::tasks::SftEncoder;
use gralora_train::tasks::multiple_choice::{LmBatch, LmItem};
use serde_json::Value;

use gralora_train::trainer::RunMetrics;

use super::training::{assert_same_adapters, kill_and_resume};
use super::{fetched, gralora, metrics, tmp_dir};

fn user(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/user")
        .join(name)
}

/// All of `path` as evaluation examples (the file is given as its own evaluation file, so
/// nothing is split off).
fn whole(path: &Path, columns: &Columns) -> data::LabelledData {
    read_labelled(path, Some(path), 0.1, 0, columns).unwrap()
}

#[test]
fn every_format_reads_to_the_same_examples() {
    let reference = whole(&user("reviews.jsonl"), &Columns::default());
    assert_eq!(reference.labels, ["negative", "positive"], "sorted names");
    assert_eq!(reference.train.len(), 24);
    assert_eq!(reference.train, reference.eval);
    assert_eq!(
        reference.train[22].a,
        "She said \"wonderful\", and she was right."
    );
    assert_eq!(
        reference.train[23].a,
        "Ni drôle ni touchant: raté, hélas.\nUne déception."
    );
    assert_eq!((reference.train[0].label, reference.train[1].label), (1, 0));
    for name in [
        "reviews.csv",
        "reviews.tsv",
        "reviews.jsonl.gz",
        "reviews.parquet",
        "reviews.arrow",
        "reviews_array.json",
    ] {
        let d = whole(&user(name), &Columns::default());
        assert_eq!(d, reference, "{name}");
    }
    let renamed = Columns {
        text: "sentence".into(),
        pair: None,
        label: "sentiment".into(),
    };
    assert_eq!(whole(&user("reviews_columns.csv"), &renamed), reference);
    let nested = Columns {
        text: "doc.review".into(),
        pair: None,
        label: "doc.gold".into(),
    };
    assert_eq!(whole(&user("reviews_nested.jsonl"), &nested), reference);

    // Pairs with integer labels: classes 0..=max, the second text from --pair-column.
    let pairs = Columns {
        text: "premise".into(),
        pair: Some("hypothesis".into()),
        label: "label".into(),
    };
    let d = whole(&user("pairs.tsv"), &pairs);
    assert_eq!(d.labels, ["0", "1"]);
    assert_eq!(d.train[1].a, "A man is playing a guitar.");
    assert_eq!(d.train[1].b.as_deref(), Some("Nobody is making music."));
    assert_eq!(
        d.train.iter().map(|e| e.label).collect::<Vec<_>>(),
        [1, 0, 1, 0, 1, 0]
    );
}

#[test]
fn scores_are_a_regression() {
    let columns = Columns {
        text: "sentence1".into(),
        pair: Some("sentence2".into()),
        label: "score".into(),
    };
    let path = user("scores.csv");
    assert!(data::has_scores(&path, &columns).unwrap());
    assert!(
        !data::has_scores(
            &user("pairs.tsv"),
            &Columns {
                label: "label".into(),
                ..columns.clone()
            }
        )
        .unwrap()
    );
    let d = data::read_scored(&path, Some(&path), 0.1, 0, &columns).unwrap();
    assert_eq!(d.train.len(), 16);
    assert_eq!(d.train[1].score, 0.2);
    assert_eq!(d.train[1].b.as_deref(), Some("A woman is slicing onions."));
    // Read as classes, a score is refused with the row.
    let err = read_labelled(&path, None, 0.1, 0, &columns)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line ") && err.contains("is a score, not a class"),
        "{err}"
    );
}

#[test]
fn a_held_out_split_is_seeded_and_disjoint() {
    let path = user("reviews.csv");
    let a = read_labelled(&path, None, 0.25, 3, &Columns::default()).unwrap();
    let b = read_labelled(&path, None, 0.25, 3, &Columns::default()).unwrap();
    let c = read_labelled(&path, None, 0.25, 4, &Columns::default()).unwrap();
    assert_eq!(a, b, "the same seed holds out the same rows");
    assert_ne!(a.eval, c.eval, "another seed, other rows");
    assert_eq!((a.train.len(), a.eval.len()), (18, 6));
    for e in &a.eval {
        assert!(!a.train.contains(e), "held-out rows are not trained on");
    }
}

/// A file far larger than what reading it keeps: rows go to an unnamed spill file as they are
/// parsed, so the reading thread's heap holds the index (16 bytes a row while streaming, 12 for
/// each split) and its buffers, never the texts; a split and a subset are selections of it.
#[test]
fn a_large_file_is_read_into_a_spill_file_in_bounded_memory() {
    use std::io::Write;
    let dir = tmp_dir("large-file");
    let path = dir.join("large.jsonl");
    let rows = 100_000;
    let filler = "a sentence long enough to weigh more than its index entry ".repeat(5);
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..rows {
            let label = ["negative", "positive"][i % 2];
            writeln!(
                out,
                r#"{{"text": "row {i}: {filler}", "label": "{label}"}}"#
            )
            .unwrap();
        }
    }
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    let (d, peak) = crate::fuzz_support::heap_peak(|| {
        data::labelled_items(&path, None, 0.1, 7, &Columns::default()).unwrap()
    });
    eprintln!(
        "{rows} rows, {} MiB file: heap peak {:.2} MiB while reading and splitting",
        size >> 20,
        peak as f64 / (1 << 20) as f64
    );
    assert!(size > 30 << 20, "the file is {size} bytes");
    assert!(
        peak < 64 * rows + (2 << 20),
        "reading held {peak} bytes at once for {rows} rows"
    );
    assert!(d.train.is_spilled() && d.eval.is_spilled());
    assert_eq!((d.train.len(), d.eval.len()), (90_000, 10_000));
    assert_eq!(d.labels, ["negative", "positive"]);
    // Every row once, with its own label, in the split that split_off draws.
    let (want_train, want_eval) = data::split_off((0..rows).collect(), 0.1, 7);
    for (items, want) in [(&d.train, &want_train), (&d.eval, &want_eval)] {
        for (k, e) in items.iter().enumerate().step_by(997) {
            let e = e.unwrap();
            let i = want[k];
            assert_eq!(e.a, format!("row {i}: {filler}"));
            assert_eq!(e.label, i % 2);
        }
    }
    // A subset of the spilled rows is spilled too, and costs only its index.
    let some = data::subset_items(&d.train, Some(1000), 7, true);
    assert!(some.is_spilled());
    assert_eq!(some.len(), 1000);
    assert_eq!(some.index_bytes(), 1000 * 8);
    let want = data::seeded_subset(want_train.clone(), Some(1000), 7, true);
    assert_eq!(
        some.get(999).unwrap().a,
        format!("row {}: {filler}", want[999])
    );
    // Tokenised, they stay spilled: 12 bytes an item, its token count kept for the batching.
    let Some(dir) = fetched("minilm", "minilm") else {
        return;
    };
    let mut tok = TextTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let (items, (truncated, _)) =
        gralora_train::tasks::classification::tokenize_counted(&mut tok, &some, 32).unwrap();
    assert!(items.is_spilled());
    assert_eq!(items.index_bytes(), 1000 * 12);
    assert_eq!(truncated, 1000, "every row is longer than 32 tokens");
    let item = items.get(999).unwrap();
    assert_eq!((item.encoded.ids.len(), items.tokens(999)), (32, 32));
    assert_eq!(item.label, want[999] % 2);
}

#[test]
fn sft_rows_in_every_format() {
    let (chat, _) = read_sft(
        &user("sft_messages.jsonl"),
        Some(&user("sft_text.jsonl")),
        0.1,
        0,
        &SftColumns::default(),
    )
    .unwrap();
    let (parquet, _) = read_sft(
        &user("sft_messages.parquet"),
        Some(&user("sft_text.jsonl")),
        0.1,
        0,
        &SftColumns::default(),
    )
    .unwrap();
    assert_eq!(
        chat, parquet,
        "a Parquet list<struct> column reads as the JSON list"
    );
    assert_eq!(chat.len(), 3);
    let SftExample::Chat(turns) = &chat[1] else {
        panic!("{:?}", chat[1]);
    };
    assert_eq!(turns.len(), 5);
    assert_eq!(turns[0], Message::new("system", "You answer in one word."));
    assert_eq!(turns[4], Message::new("assistant", "Green."));

    let (alpaca, texts) = read_sft(
        &user("sft_alpaca.json"),
        Some(&user("sft_text.jsonl")),
        0.1,
        0,
        &SftColumns::default(),
    )
    .unwrap();
    assert_eq!(
        alpaca[0],
        SftExample::Chat(vec![
            Message::new("user", "Add the numbers.\n2 and 3"),
            Message::new("assistant", "5"),
        ])
    );
    assert_eq!(
        alpaca[1],
        SftExample::Chat(vec![
            Message::new("user", "Name a primary colour."),
            Message::new("assistant", "Red."),
        ]),
        "an empty input adds nothing"
    );
    assert_eq!(
        texts[2],
        SftExample::Text("Paris is the capital of France.".into())
    );
    let (completions, _) = read_sft(
        &user("sft_completion.csv"),
        Some(&user("sft_text.jsonl")),
        0.1,
        0,
        &SftColumns::default(),
    )
    .unwrap();
    assert_eq!(
        completions[1],
        SftExample::Completion {
            prompt: "Two plus two equals".into(),
            completion: " four.".into()
        }
    );
    // Named (and nested) prompt and completion fields.
    let columns = SftColumns {
        prompt: Some("doc.review".into()),
        completion: Some("doc.gold".into()),
    };
    let rows = data::read_sft_file(&user("reviews_nested.jsonl"), &columns).unwrap();
    assert_eq!(
        rows[1],
        SftExample::Completion {
            prompt: "The plot is a mess and the jokes fall flat.".into(),
            completion: "negative".into()
        }
    );
}

/// Write `content` to `name` in `dir`.
fn file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn bad_files_are_one_line_errors_naming_file_line_and_field() {
    let dir = tmp_dir("bad-data");
    let ok = user("reviews.csv");
    let cases: Vec<(PathBuf, &[&str])> = vec![
        (
            file(
                &dir,
                "missing.jsonl",
                b"{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"}\n",
            ),
            &[
                "missing.jsonl",
                "line 2",
                "no field `label`",
                "--label-column",
            ],
        ),
        (
            file(&dir, "type.jsonl", b"{\"text\": 5, \"label\": \"x\"}\n"),
            &["line 1", "field `text` should be a string, found a number"],
        ),
        (
            file(&dir, "float.jsonl", b"{\"text\": \"a\", \"label\": 0.5}\n"),
            &["line 1", "label `0.5` is a score, not a class"],
        ),
        (
            file(&dir, "empty.csv", b""),
            &["empty.csv", "holds no rows"],
        ),
        (file(&dir, "blank.jsonl", b"\n\n"), &["holds no rows"]),
        (
            file(&dir, "data.xlsx", b"x"),
            &["unknown data format `.xlsx`", ".parquet"],
        ),
        (
            file(
                &dir,
                "utf8.jsonl",
                b"{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"\xff\", \"label\": \"y\"}\n",
            ),
            &["line 2", "not valid UTF-8"],
        ),
        (
            file(&dir, "utf8.csv", b"text,label\nok,a\nbad \xfe,b\n"),
            &["line 3", "not valid UTF-8"],
        ),
        (
            file(&dir, "ragged.csv", b"text,label\na,x\nb,y,extra\n"),
            &["ragged.csv", "line 3", "has 3 fields, the header has 2"],
        ),
        (
            file(
                &dir,
                "json.jsonl",
                b"{\"text\": \"a\", \"label\": \"x\"}\n{oops}\n",
            ),
            &["line 2", "not valid JSON"],
        ),
        (
            file(&dir, "array.jsonl", b"[1, 2]\n"),
            &["element 0", "expected a JSON object, found a number"],
        ),
        (
            file(&dir, "one.csv", b"text,label\na,x\nb,x\n"),
            &["every row has the label `x`", "at least two classes"],
        ),
        (
            file(&dir, "broken.parquet", b"PAR1 not really"),
            &["broken.parquet", "not a readable Parquet file"],
        ),
        (dir.join("absent.csv"), &["absent.csv", "file not found"]),
    ];
    for (path, needles) in cases {
        let err = read_labelled(&path, None, 0.5, 0, &Columns::default())
            .unwrap_err()
            .to_string();
        assert_eq!(err.lines().count(), 1, "{}: {err}", path.display());
        for n in needles {
            assert!(err.contains(n), "{}: `{n}` not in: {err}", path.display());
        }
    }
    // A label seen only in the evaluation file.
    let eval = file(
        &dir,
        "eval.csv",
        b"text,label\nfine,positive\nso so,neutral\n",
    );
    let err = read_labelled(&ok, Some(&eval), 0.1, 0, &Columns::default())
        .unwrap_err()
        .to_string();
    for n in [
        "eval.csv",
        "line 3",
        "label `neutral` does not occur in the training data (labels: negative, positive)",
    ] {
        assert!(err.contains(n), "{err}");
    }
    // SFT rows without any known fields, and a message without its content.
    let err = read_sft(
        &file(&dir, "sft.jsonl", b"{\"question\": \"q\"}\n"),
        None,
        0.1,
        0,
        &SftColumns::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("line 1") && err.contains("no SFT fields (fields here: question)"),
        "{err}"
    );
    let err = read_sft(
        &file(
            &dir,
            "sft2.jsonl",
            b"{\"messages\": [{\"role\": \"user\"}]}\n",
        ),
        None,
        0.1,
        0,
        &SftColumns::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`messages[0]` has no `content`"), "{err}");
}

fn smollm2_tokenizer() -> Option<TextTokenizer> {
    let path = fetched("smollm2", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let file = gralora_models::gguf::GgufFile::open(&path).unwrap();
    Some(TextTokenizer::from_gguf(&file).unwrap())
}

fn chat_fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(user("chat.json")).unwrap()).unwrap()
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v["messages"].clone()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_template(template: &ChatTemplate, tok: &TextTokenizer, cases: &Value, name: &str) {
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let m = messages(case);
        assert_eq!(
            template.render(&m, false).unwrap(),
            case["text"].as_str().unwrap(),
            "{name} {i}: text"
        );
        let got = template.encode(tok, &m).unwrap();
        assert_eq!(got.ids, ids(&case["ids"]), "{name} {i}: ids");
        let mask: Vec<bool> = ids(&case["assistant_mask"])
            .iter()
            .map(|&b| b == 1)
            .collect();
        assert_eq!(got.assistant, mask, "{name} {i}: assistant mask");
        let prompt = template.prompt(&m[..m.len() - 1]).unwrap();
        assert_eq!(
            tok.encode_with_offsets(&prompt).unwrap().0,
            ids(&case["prompt_ids"]),
            "{name} {i}: generation prompt"
        );
    }
}

#[test]
fn chat_templates_match_transformers() {
    let Some(tok) = smollm2_tokenizer() else {
        return;
    };
    let fixture = chat_fixture();
    // SmolLM2's own template, from the GGUF metadata.
    let own = tok
        .chat_template
        .clone()
        .expect("SmolLM2's GGUF has a chat template");
    check_template(&own, &tok, &fixture["smollm2"], "gguf");
    // A Hugging Face tokenizer_config.json's template (another family's), named on the
    // command line, and found in a snapshot directory.
    let other = ChatTemplate::from_file(&user("tokenizer_config.json"), &tok).unwrap();
    check_template(
        &other,
        &tok,
        &fixture["tokenizer_config"],
        "tokenizer_config.json",
    );
    let snapshot = tmp_dir("chat-snapshot");
    std::fs::copy(
        user("tokenizer_config.json"),
        snapshot.join("tokenizer_config.json"),
    )
    .unwrap();
    let found = ChatTemplate::from_hf_dir(&snapshot).unwrap().unwrap();
    check_template(&found, &tok, &fixture["tokenizer_config"], "snapshot");
    // Its raise_exception reaches the user as a one-line error.
    let err = other
        .render(&[Message::new("tool", "x")], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown role tool") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn only_completion_and_assistant_tokens_carry_the_loss() {
    let Some(tok) = smollm2_tokenizer() else {
        return;
    };
    let fixture = chat_fixture();
    let template = tok.chat_template.clone().unwrap();
    let encoder = |train_on_prompt| SftEncoder {
        tokenizer: &tok,
        template: Some(&template),
        train_on_prompt,
        max_len: 512,
    };
    let case = &fixture["smollm2"][1];
    let example = SftExample::Chat(messages(case));
    let (items, t) = encoder(false)
        .encode_all(std::slice::from_ref(&example))
        .unwrap();
    assert_eq!(t.truncated, 0);
    let item = &items[0];
    let mask = ids(&case["assistant_mask"]);
    // In a batch, exactly the assistant's tokens are predicted.
    let device = burn::tensor::Device::flex();
    let batch = LmBatch::new(&[item], &device);
    let targets: Vec<i64> = batch
        .targets
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .unwrap();
    let expected: Vec<i64> = item
        .ids
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m == 1)
        .map(|(&id, _)| id as i64)
        .collect();
    assert_eq!(targets, expected);
    assert_eq!(
        item.target_count(),
        8,
        "`Blue.<|im_end|>\\n` and `Green.<|im_end|>\\n`"
    );

    // A completion: loss on the completion and EOS; --train-on-prompt: on everything but the first.
    let c = SftExample::Completion {
        prompt: "Two plus two equals".into(),
        completion: " four.".into(),
    };
    let (items, _) = encoder(false).encode_all(std::slice::from_ref(&c)).unwrap();
    let prompt_len = tok.encode("Two plus two equals", true).unwrap().ids.len();
    let completion = tok.encode(" four.", false).unwrap().ids;
    assert_eq!(items[0].targets.len(), 1);
    assert_eq!(
        items[0].targets[0],
        prompt_len..prompt_len + completion.len() + 1
    );
    assert_eq!(items[0].ids.last(), tok.eos.first());
    let (all, _) = encoder(true).encode_all(std::slice::from_ref(&c)).unwrap();
    assert_eq!(all[0].target_count(), all[0].ids.len() - 1);

    // Truncation is counted; an example whose completion is cut off entirely is dropped.
    let short = SftEncoder {
        max_len: prompt_len + 1,
        ..encoder(false)
    };
    let full_chat = ids(&case["ids"]).len();
    let full_c = prompt_len + completion.len() + 1;
    let (items, t) = short.encode_all(&[c.clone(), example]).unwrap();
    assert_eq!((t.truncated, t.dropped), (2, 1), "{t}");
    assert_eq!(t.tokens_lost, full_c + full_chat - 2 * (prompt_len + 1));
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].target_count(),
        1,
        "the completion's first token is kept"
    );
}

fn run_ok(args: &[&str], home: &Path) -> String {
    let o = gralora(args, home);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?}: {err}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn a_classifier_on_string_labels_reloads_through_eval_and_infer() {
    if fetched("minilm", "minilm/model.safetensors").is_none() {
        return;
    }
    let home = gralora_models::assets::home();
    let dir = tmp_dir("own-classifier");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let train = user("reviews.csv");
    let eval = user("reviews.tsv");
    run_ok(
        &[
            "train",
            "--model",
            "minilm",
            "--data",
            train.to_str().unwrap(),
            "--eval-data",
            eval.to_str().unwrap(),
            "--method",
            "gralora",
            "--rank",
            "8",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "2e-3",
            "--device",
            "flex",
            "--out",
            out_s,
        ],
        &home,
    );
    let m: RunMetrics = metrics(&out);
    assert_eq!(m.task, "reviews.csv");
    assert_eq!(m.eval.examples, 24);
    let labels: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels.json")).unwrap()).unwrap();
    assert_eq!(
        labels["labels"],
        serde_json::json!(["negative", "positive"])
    );

    // `eval` on the same rows in another format: the same score.
    let jsonl = user("reviews.jsonl");
    let line = run_ok(
        &[
            "eval",
            "--model",
            "minilm",
            "--adapter",
            out_s,
            "--data",
            jsonl.to_str().unwrap(),
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    let e: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(e["accuracy"].as_f64().unwrap(), m.eval.accuracy);
    assert!(
        (e["loss"].as_f64().unwrap() - m.eval.loss).abs() < 1e-4,
        "{e} vs {}",
        m.eval.loss
    );

    // `infer` names the class and gives every class's probability; its predictions make the
    // same accuracy.
    let d = whole(&jsonl, &Columns::default());
    let mut correct = 0;
    for ex in &d.train {
        let line = run_ok(
            &[
                "infer",
                "--model",
                "minilm",
                "--adapter",
                out_s,
                "--text",
                &ex.a,
                "--device",
                "flex",
                "--json",
            ],
            &home,
        );
        let v: Value = serde_json::from_str(line.trim()).unwrap();
        let p = v["probabilities"].as_object().unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["negative", "positive"]);
        let sum: f64 = p.values().map(|x| x.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4);
        correct += usize::from(v["label"] == d.labels[ex.label].as_str());
    }
    assert_eq!(correct as f64 / d.train.len() as f64, m.eval.accuracy);
}

#[test]
fn sft_of_smollm2_on_a_small_instruction_file_lowers_the_held_out_loss() {
    if fetched("smollm2", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").is_none() {
        return;
    }
    let home = gralora_models::assets::home();
    let dir = tmp_dir("own-sft");
    let out = dir.join("run");
    let data = user("sft_train.jsonl");
    let stdout = run_ok(
        &[
            "train",
            "--model",
            "smollm2",
            "--data",
            data.to_str().unwrap(),
            "--eval-split",
            "0.2",
            "--method",
            "gralora",
            "--rank",
            "8",
            "--targets",
            "q_proj,v_proj",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "2e-3",
            "--max-len",
            "64",
            "--sample-prompts",
            "2",
            "--device",
            "flex",
            "--out",
            out.to_str().unwrap(),
        ],
        &home,
    );
    assert!(stdout.contains("perplexity"), "{stdout}");
    let m: RunMetrics = metrics(&out);
    let before = m.baseline_loss.unwrap();
    assert_eq!(m.eval.examples, 8);
    assert_eq!(m.train_examples, 32);
    assert!(
        m.eval.loss < before * 0.8,
        "held-out loss {before} -> {}",
        m.eval.loss
    );
    assert!((m.eval.perplexity.unwrap() - m.eval.loss.exp()).abs() < 1e-9);
    assert!(out.join("chat_template.jinja").is_file());
    let samples: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("samples.json")).unwrap()).unwrap();
    assert_eq!(samples.as_array().unwrap().len(), 2);
    // `eval --data` scores the same rows the run held out no worse than training reported on
    // the whole file's held-out part; on the full file it runs and reports a perplexity.
    let line = run_ok(
        &[
            "eval",
            "--model",
            "smollm2",
            "--adapter",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    let e: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(e["examples"], 40);
    assert!(e["perplexity"].as_f64().unwrap() < before.exp());
    // `infer --chat` answers through the same template.
    let line = run_ok(
        &[
            "infer",
            "--model",
            "smollm2",
            "--adapter",
            out.to_str().unwrap(),
            "--chat",
            "Capital of France?",
            "--max-new-tokens",
            "8",
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert!(v["completion"].as_str().unwrap().contains("Paris"), "{v}");
}

#[test]
fn bad_data_arguments_leave_no_run_directory() {
    let home = tmp_dir("bad-data-args");
    let out = home.join("out");
    let o_str = out.to_str().unwrap();
    let ragged = file(&home, "ragged.csv", b"text,label\na,x\nb,y,extra\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "train",
                "--model",
                "minilm",
                "--data",
                "/nonexistent/x.csv",
                "--out",
                o_str,
            ],
            "file not found",
        ),
        (
            vec![
                "train", "--model", "minilm", "--data", "x.xlsx", "--out", o_str,
            ],
            "unknown data format",
        ),
        (
            vec![
                "train",
                "--model",
                "minilm",
                "--data",
                ragged.to_str().unwrap(),
                "--eval-split",
                "1.5",
                "--out",
                o_str,
            ],
            "--eval-split 1.5 must be in (0, 1)",
        ),
        (
            vec![
                "train",
                "--model",
                "minilm",
                "--task",
                "sst2",
                "--data",
                ragged.to_str().unwrap(),
                "--out",
                o_str,
            ],
            "cannot be used with",
        ),
    ];
    for (args, needle) in cases {
        let o = gralora(&args, &home);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(!out.exists(), "{args:?} left {o_str} behind");
    }
    // A malformed row is found after the model loads: still one line, still nothing on disk.
    if fetched("minilm", "minilm/model.safetensors").is_some() {
        let o = gralora(
            &[
                "train",
                "--model",
                "minilm",
                "--data",
                ragged.to_str().unwrap(),
                "--device",
                "flex",
                "--out",
                o_str,
            ],
            &gralora_models::assets::home(),
        );
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let last = err.trim().lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("error: ") && last.contains("ragged.csv: line 3: has 3 fields"),
            "{err}"
        );
        assert!(!out.exists(), "a refused run leaves no directory behind");
    }
}

#[test]
fn a_sigkilled_sft_run_resumed_ends_like_an_uninterrupted_one() {
    if fetched("smollm2", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").is_none() {
        return;
    }
    let home = tmp_dir("own-sft-resume");
    let real = gralora_models::assets::home().join("smollm2");
    std::os::unix::fs::symlink(&real, home.join("smollm2")).unwrap();
    let data = user("sft_train.jsonl");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            "smollm2",
            "--data",
            data.to_str().unwrap(),
            "--eval-split",
            "0.2",
            "--method",
            "gralora",
            "--rank",
            "4",
            "--targets",
            "q_proj,v_proj",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "2e-3",
            "--max-len",
            "64",
            "--checkpoint-every",
            "3",
            "--device",
            "flex",
            "--seed",
            "5",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    };
    // 32 training conversations in batches of 4: 8 batches an epoch; killed in epoch 2.
    let (full, cut, at) = kill_and_resume(&home, &args, 8);
    assert!(at > 8 && at < 16, "killed mid-epoch 2, at batch {at}");
    let (x, y) = (metrics(&full), metrics(&cut));
    assert_eq!(y.resumed_from_batch, Some(at));
    assert!(
        (x.eval.loss - y.eval.loss).abs() < 1e-5,
        "{} vs {}",
        x.eval.loss,
        y.eval.loss
    );
    assert_eq!(x.baseline_loss, y.baseline_loss);
    assert_same_adapters(&full, &cut);
}

#[test]
fn a_regression_on_scored_pairs_reports_correlations_and_reloads() {
    if fetched("minilm", "minilm/model.safetensors").is_none() {
        return;
    }
    let home = gralora_models::assets::home();
    let dir = tmp_dir("own-regression");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let data = user("scores.csv");
    let stdout = run_ok(
        &[
            "train",
            "--model",
            "minilm",
            "--data",
            data.to_str().unwrap(),
            "--eval-data",
            data.to_str().unwrap(),
            "--text-column",
            "sentence1",
            "--pair-column",
            "sentence2",
            "--label-column",
            "score",
            "--rank",
            "8",
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "2e-3",
            "--device",
            "flex",
            "--out",
            out_s,
        ],
        &home,
    );
    assert!(stdout.contains("Pearson"), "{stdout}");
    let m: RunMetrics = metrics(&out);
    let (r, rho) = (m.eval.pearson.unwrap(), m.eval.spearman.unwrap());
    assert!(
        r > 0.5 && rho > 0.5,
        "trained on these pairs: Pearson {r}, Spearman {rho}"
    );
    let labels: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels.json")).unwrap()).unwrap();
    assert_eq!(labels["regression"], true);
    let line = run_ok(
        &[
            "eval",
            "--model",
            "minilm",
            "--adapter",
            out_s,
            "--data",
            data.to_str().unwrap(),
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    let e: Value = serde_json::from_str(line.trim()).unwrap();
    assert!((e["pearson"].as_f64().unwrap() - r).abs() < 1e-6, "{e}");
    assert!(
        (e["loss"].as_f64().unwrap() - m.eval.loss).abs() < 1e-5,
        "{e}"
    );
    let line = run_ok(
        &[
            "infer",
            "--model",
            "minilm",
            "--adapter",
            out_s,
            "--text",
            "A man is playing a guitar.",
            "--text-pair",
            "A man plays the guitar.",
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert!(
        v["score"].as_f64().unwrap() > 2.5,
        "a paraphrase scores high: {v}"
    );
}

#[test]
fn packed_examples_score_as_if_each_ran_alone() {
    use gralora_train::tasks::multiple_choice::answer_log_probs;
    let Some(path) = fetched("smollm2", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let device = burn::tensor::Device::flex();
    let file = gralora_models::gguf::GgufFile::open(&path).unwrap();
    let tok = TextTokenizer::from_gguf(&file).unwrap();
    let (_, model) = gralora_models::Llama::from_gguf(file, &device).unwrap();
    let encode = |t: &str| tok.encode(t, true).unwrap().ids;
    let a = LmItem::answer(encode("The capital of Italy is Rome."), 3);
    let b = LmItem::answer(encode("Two plus two equals four, said the teacher."), 2);
    let c = LmItem::answer(encode("Paris"), 1);
    let alone: Vec<f32> = [&a, &b, &c]
        .iter()
        .flat_map(|i| {
            let batch = LmBatch::new(&[*i], &device);
            gralora::io::read_f32(answer_log_probs(&model, batch)).unwrap()
        })
        .collect();
    let packed = gralora_train::tasks::pack(vec![a.clone(), b.clone(), c.clone()], 64);
    assert_eq!(packed.len(), 1);
    assert_eq!(packed[0].starts.len(), 2);
    // With an unpacked row beside it, padded: the packed row keeps its own attention.
    let batch = LmBatch::new(&[&packed[0], &a], &device);
    let together = gralora::io::read_f32(answer_log_probs(&model, batch)).unwrap();
    let (packed_part, a_part) = together.split_at(alone.len());
    // pack() puts the longest first: b, a, c.
    let (na, nb) = (a.target_count(), b.target_count());
    let expected: Vec<f32> = alone[na..na + nb]
        .iter()
        .chain(&alone[..na])
        .chain(&alone[na + nb..])
        .copied()
        .collect();
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(packed_part, &expected) < 2e-3,
        "{packed_part:?} vs {expected:?}"
    );
    assert!(diff(a_part, &alone[..na]) < 2e-3);
    // Without the segment marks the later examples would see the earlier ones.
    let mut unmarked = packed[0].clone();
    unmarked.starts.clear();
    let leaky = gralora::io::read_f32(answer_log_probs(
        &model,
        LmBatch::new(&[&unmarked], &device),
    ))
    .unwrap();
    assert!(
        diff(&leaky, &expected) > 1e-2,
        "the test can tell the difference"
    );
}

#[test]
fn a_directory_being_trained_is_locked_against_a_second_process() {
    if fetched("minilm", "minilm/model.safetensors").is_none() {
        return;
    }
    let home = gralora_models::assets::home();
    let dir = tmp_dir("locked");
    let out = dir.join("run");
    let data = user("reviews.csv");
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_gralora"))
        .args([
            "train",
            "--model",
            "minilm",
            "--data",
            data.to_str().unwrap(),
            "--rank",
            "4",
            "--epochs",
            "40",
            "--batch-size",
            "4",
            "--device",
            "flex",
            "--out",
            out.to_str().unwrap(),
        ])
        .env("GRALORA_HOME", &home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !out.join("train_config.json").is_file() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(120));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = gralora(
        &[
            "train",
            "--out",
            out.to_str().unwrap(),
            "--resume",
            "--device",
            "flex",
        ],
        &home,
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("is being trained by another gralora process"),
        "{err}"
    );
    assert!(first.try_wait().unwrap().is_none(), "the first run goes on");
    first.kill().unwrap();
    first.wait().unwrap();
    // SIGKILL released the lock.
    let lock = gralora_train::trainer::RunDir(out.clone()).lock();
    assert!(lock.is_ok(), "{lock:?}");
}
