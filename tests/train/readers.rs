//! The data readers against pyarrow's and Python's reading, and the real files' sizes.

use super::*;

#[test]
fn sst2_loaders_match_the_python_reading() {
    let exp = expected();
    let home = fixtures();
    let dev = data::read_sst2_arrow(&home.join(data::SST2_DEV)).unwrap();
    assert_eq!(dev.len() as u64, exp["sst2_dev"]["count"].as_u64().unwrap());
    assert_eq!(labels(&dev), json_u64s(&exp["sst2_dev"]["labels"]));
    assert_eq!(dev[0].a, exp["sst2_dev"]["first"].as_str().unwrap());

    let rt = data::read_rotten_tomatoes(&home.join(data::RT_FILE)).unwrap();
    let e = &exp["rt"];
    assert_eq!(rt.len() as u64, e["train_before_overlap"].as_u64().unwrap());
    assert_eq!(
        e["rated_lines"].as_u64().unwrap() - e["zero_ratings"].as_u64().unwrap(),
        rt.len() as u64,
        "zero ratings are dropped"
    );
    let data = Task::Sst2.load(&home).unwrap();
    assert_eq!(
        data.train.len() as u64,
        e["train_after_overlap"].as_u64().unwrap()
    );
    assert_eq!(
        data.train.iter().filter(|x| x.label == 1).count() as u64,
        e["positives_after_overlap"].as_u64().unwrap()
    );
    // No evaluation sentence survives in training, even with different punctuation and case.
    let held: Vec<String> = data.eval.iter().map(|x| data::normalise(&x.a)).collect();
    assert!(
        data.train
            .iter()
            .all(|x| !held.contains(&data::normalise(&x.a)))
    );
    assert!(
        data.train.len() < rt.len(),
        "the excerpt contains dev sentences to remove"
    );
}

#[test]
fn pair_task_loaders_match_the_python_reading() {
    let exp = expected();
    let home = fixtures();
    for (file, key) in [
        (data::SNLI_TRAIN, "snli_1.0_train_subset.jsonl"),
        (data::SNLI_TEST, "snli_1.0_test.jsonl"),
    ] {
        let v = data::read_snli(&home.join(file)).unwrap();
        assert_eq!(labels(&v), json_u64s(&exp["snli"][key]), "{file}");
        assert!(v.iter().all(|x| x.b.is_some()));
    }
    for (file, key) in [
        (data::BOOLQ_TRAIN, "train_rc_5shot"),
        (data::BOOLQ_VAL, "val_rc_5shot"),
    ] {
        let v = data::read_boolq(&home.join(file)).unwrap();
        assert_eq!(
            labels(&v),
            json_u64s(&exp["boolq"][key]["labels"]),
            "{file}: one example per doc"
        );
        assert_eq!(
            v[0].a,
            exp["boolq"][key]["first_question"].as_str().unwrap()
        );
        assert!(
            v[0].b.as_ref().unwrap().starts_with("Persian language") || key != "train_rc_5shot"
        );
    }
}

#[test]
fn real_sst2_dev_set_has_the_glue_counts() {
    let Some(path) = fetched("glue", data::SST2_DEV) else {
        return;
    };
    let exp = expected();
    let dev = data::read_sst2_arrow(&path).unwrap();
    assert_eq!(
        dev.len() as u64,
        exp["sst2_full_dev"]["count"].as_u64().unwrap()
    );
    assert_eq!(
        dev.iter().filter(|x| x.label == 1).count() as u64,
        exp["sst2_full_dev"]["positives"].as_u64().unwrap()
    );
}

#[test]
fn bad_data_files_are_clear_errors() {
    let dir = tmp_dir("bad-data");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "id\tsentiment\ttext\n").unwrap();
    let e = data::read_rotten_tomatoes(&empty).unwrap_err().to_string();
    assert!(
        e.contains("empty.txt") && e.contains("no usable examples"),
        "{e}"
    );
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "id\tsentiment\ttext\n1\tgreat\tA film.\n").unwrap();
    let e = data::read_rotten_tomatoes(&bad).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("not a number"), "{e}");
    let e = data::read_sst2_arrow(&bad).unwrap_err().to_string();
    assert!(e.contains("not an Arrow IPC stream"), "{e}");
    let e = data::read_snli(&dir.join("missing.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gralora fetch"), "{e}");
    let e = "mnli".parse::<Task>().unwrap_err().to_string();
    assert!(
        e.contains("unknown task `mnli`") && e.contains("sst2"),
        "{e}"
    );
}

#[test]
fn multiple_choice_loaders_match_the_python_reading() {
    use gralora_train::data::read_mc;
    use gralora_train::tasks::McTask;
    let exp = expected();
    for (task, key) in [
        (McTask::ArcE, "arc_easy"),
        (McTask::Winogrande, "winogrande"),
    ] {
        let [_, val] = task.files();
        let got = read_mc(&fixtures().join(&val)).unwrap();
        let want = exp["mc"][key].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{key}: one example per document");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.gold as u64, w["gold"].as_u64().unwrap());
            let contexts: Vec<&str> = w["contexts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            if contexts.len() == 1 {
                assert!(g.contexts.iter().all(|c| c == contexts[0]), "{key}");
            } else {
                assert_eq!(g.contexts, contexts, "{key}: the option fills the blank");
            }
            assert_eq!(g.continuations[g.gold], w["continuation"].as_str().unwrap());
        }
    }
    let e = "mmlu".parse::<McTask>().unwrap_err().to_string();
    assert!(
        e.contains("unknown decoder task") && e.contains("arc-e"),
        "{e}"
    );
}

#[test]
fn glue_pairs_and_cross_validation_folds() {
    let exp = expected();
    for (task, file) in [("mrpc", data::MRPC_DEV), ("rte", data::RTE_DEV)] {
        let v = data::read_glue_pairs(&fixtures().join(file)).unwrap();
        assert_eq!(
            labels(&v),
            json_u64s(&exp["pairs"][task]["labels"]),
            "{task}"
        );
        assert_eq!(v[0].b.as_deref(), exp["pairs"][task]["first_b"].as_str());
    }
    let all = Task::Mrpc.load(&fixtures()).unwrap();
    assert!(all.train.is_empty() && all.eval.len() == 20);
    // 3 folds: disjoint held-out parts covering every example once; training = the rest.
    let mut held = Vec::new();
    for fold in 0..3 {
        let f = all.fold(7, 3, fold);
        assert_eq!(f.train.len() + f.eval.len(), 20);
        assert!((6..=7).contains(&f.eval.len()));
        assert!(f.eval.iter().all(|e| !f.train.contains(e)));
        held.extend(f.eval);
    }
    let mut a: Vec<String> = held.iter().map(|e| e.a.clone()).collect();
    let mut b: Vec<String> = all.eval.iter().map(|e| e.a.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_ne!(
        all.fold(7, 3, 1).eval,
        all.fold(8, 3, 1).eval,
        "the seed picks the folds"
    );
}

#[test]
fn gsm8k_problems_and_reference_answers() {
    use gralora_train::tasks::gsm8k;
    let exp = expected();
    let got = gsm8k::read(&fixtures().join(gsm8k::GSM8K_TEST)).unwrap();
    let want = exp["gsm8k"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.answer, w["answer"].as_str().unwrap());
        assert!(g.prompt.ends_with(w["prompt_end"].as_str().unwrap()));
        assert!(
            g.prompt.trim_end().ends_with("Answer:"),
            "few-shot prompt ends at the answer"
        );
        // The reference's own worked answer style scores as correct.
        let worked = format!(" ... So the answer is {}.", g.answer);
        assert_eq!(
            gsm8k::extract_answer(&worked),
            Some(gsm8k::normalise_number(&g.answer))
        );
    }
}

/// The full task files, when fetched: the sizes ASSETS.md and the datasets' cards give
/// (SNLI pairs without a gold label are dropped: 110 in the train subset, 176 in test).
#[test]
fn real_task_files_have_their_published_sizes() {
    let home = gralora_models::assets::home();
    if !home.join("commonsense/boolq").is_dir() || !home.join(data::SNLI_TEST).is_file() {
        eprintln!("skipped: commonsense and snli not fetched (CI does not fetch them)");
        return;
    }
    let boolq = Task::Boolq.load(&home).unwrap();
    assert_eq!((boolq.train.len(), boolq.eval.len()), (9427, 3270));
    let snli = Task::Snli.load(&home).unwrap();
    assert_eq!((snli.train.len(), snli.eval.len()), (99890, 9824));
    let (train, val) =
        gralora_train::tasks::multiple_choice::load(&[gralora_train::tasks::McTask::ArcE], &home)
            .unwrap();
    assert_eq!((train.len(), val.len()), (2251, 570));
    let (train, val) =
        gralora_train::tasks::multiple_choice::load(&[gralora_train::tasks::McTask::Piqa], &home)
            .unwrap();
    assert_eq!((train.len(), val.len()), (16113, 1838));
}
