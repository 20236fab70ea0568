"""Small excerpts of the task data for tests/train.rs, and the numbers the loaders must find in them.

Run by hand (needs pyarrow) after `gralora fetch glue rt snli commonsense`:
    python scripts/data_excerpts.py [GRALORA_HOME]
Writes tests/fixtures/data/: a GRALORA_HOME-shaped tree with excerpts of SST-2 dev (Arrow stream),
the Rotten Tomatoes snippets, SNLI and BoolQ, plus expected.json computed here with pyarrow and
Python's own parsing (independent of the Rust loaders).
"""
import gzip, json, os, re, sys
import pyarrow as pa
import pyarrow.ipc as ipc

home = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/gralora")
out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "data")

def norm(s):
    s = s.lower().replace("-lrb-", "").replace("-rrb-", "")
    return "".join(c for c in s if c.isalnum())

# SST-2 dev: the first 40 rows.
src = os.path.join(home, "glue/glue/sst2/validation/data-00000-of-00001.arrow")
with pa.memory_map(src) as f:
    table = ipc.open_stream(f).read_all()
full_dev = table.to_pylist()
dev = table.slice(0, 40)
p = os.path.join(out, "glue/glue/sst2/validation/data-00000-of-00001.arrow")
os.makedirs(os.path.dirname(p), exist_ok=True)
with pa.OSFile(p, "wb") as f:
    w = ipc.new_stream(f, dev.schema)
    w.write_table(dev, max_chunksize=16)  # several record batches
    w.close()
dev_rows = dev.to_pylist()
dev_norm = {norm(r["sentence"]) for r in dev_rows}

# MRPC and RTE dev: the first 20 rows each (sentence pairs).
pairs = {}
for task in ["mrpc", "rte"]:
    rel = f"glue/glue/{task}/validation/data-00000-of-00001.arrow"
    with pa.memory_map(os.path.join(home, rel)) as f:
        t = ipc.open_stream(f).read_all().slice(0, 20)
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    with pa.OSFile(os.path.join(out, rel), "wb") as f:
        w = ipc.new_stream(f, t.schema)
        w.write_table(t)
        w.close()
    rows = t.to_pylist()
    pairs[task] = {"labels": [r["label"] for r in rows], "first_b": rows[0]["sentence2"]}

# Rotten Tomatoes: every 50th line, plus the snippets matching the 40 dev sentences.
lines = open(os.path.join(home, "rt/movieReviewSnippets_GroundTruth.txt"), encoding="latin-1").read().splitlines()
header, body = lines[0], lines[1:]
overlap = [l for l in body if norm(l.split("\t", 2)[2]) in dev_norm]
spread = body[::50]  # the file is ordered; every 50th line mixes both labels
keep = spread + [l for l in overlap if l not in spread]
p = os.path.join(out, "rt/movieReviewSnippets_GroundTruth.txt")
os.makedirs(os.path.dirname(p), exist_ok=True)
with open(p, "w", encoding="latin-1", newline="\n") as f:
    f.write("\n".join([header] + keep) + "\n")
rated = [(float(l.split("\t")[1]), l.split("\t", 2)[2].strip()) for l in keep]
train = [(t, int(r > 0)) for r, t in rated if r != 0]
train_kept = [(t, y) for t, y in train if norm(t) not in dev_norm]

# SNLI: 30 train lines and 20 test lines.
def excerpt_lines(src, dst, n, gz=False):
    op = gzip.open if gz else open
    with op(src, "rt", encoding="utf-8") as f:
        rows = [next(f) for _ in range(n)]
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with op(dst, "wt", encoding="utf-8") as f:
        f.writelines(rows)
    return [json.loads(r) for r in rows]

snli = {}
for name in ["snli_1.0_train_subset.jsonl", "snli_1.0_test.jsonl"]:
    rows = excerpt_lines(os.path.join(home, "snli", name), os.path.join(out, "snli", name), 30)
    labels = {"entailment": 0, "neutral": 1, "contradiction": 2}
    snli[name] = [labels[r["gold_label"]] for r in rows if r["gold_label"] in labels]

boolq = {}
for split in ["train_rc_5shot", "val_rc_5shot"]:
    rows = excerpt_lines(os.path.join(home, "commonsense/boolq", split, "requests.jsonl.gz"),
                         os.path.join(out, "commonsense/boolq", split, "requests.jsonl.gz"), 24, gz=True)
    seen, labels, questions = set(), [], []
    for r in rows:
        d = r["doc"]
        if d["idx"] in seen:
            continue
        seen.add(d["idx"])
        labels.append(1 if d["choices"][d["gold"]] == "yes" else 0)
        questions.append(d["query"].rsplit("\nQuestion:", 1)[1].rsplit("Answer:", 1)[0].strip())
    boolq[split] = {"labels": labels, "first_question": questions[0]}

# Decoder tasks: ARC-Easy and WinoGrande validation requests (one line per choice).
mc = {}
for task, n in [("arc_easy", 16), ("winogrande", 8)]:
    rel = f"commonsense/{task}/val_rc_5shot/requests.jsonl.gz"
    rows = excerpt_lines(os.path.join(home, rel), os.path.join(out, rel), n, gz=True)
    docs, seen = [], set()
    for r in rows:
        if r["doc_id"] in seen:
            continue
        seen.add(r["doc_id"])
        d = r["doc"]
        if task == "winogrande":
            before, after = d["sentence"].split("_", 1)
            docs.append({"gold": int(d["answer"]) - 1,
                         "contexts": [before + d["option1"], before + d["option2"]],
                         "continuation": " " + after.strip()})
        else:
            docs.append({"gold": d["gold"], "contexts": [d["query"]],
                         "continuation": " " + d["choices"][d["gold"]].strip()})
    mc[task] = docs

# GSM8K test: the first 3 problems.
rows = excerpt_lines(os.path.join(home, "gsm8k/gold_bpb_5shot/requests.jsonl.gz"),
                     os.path.join(out, "gsm8k/gold_bpb_5shot/requests.jsonl.gz"), 3, gz=True)
gsm8k = [{"answer": r["doc"]["short_answer"], "prompt_end": r["request"]["context"][-60:]} for r in rows]

expected = {
    "gsm8k": gsm8k,
    "pairs": pairs,
    "mc": mc,
    "sst2_dev": {"count": len(dev_rows), "labels": [r["label"] for r in dev_rows],
                 "first": dev_rows[0]["sentence"].strip()},
    "sst2_full_dev": {"count": len(full_dev), "positives": sum(r["label"] for r in full_dev)},
    "rt": {"rated_lines": len(rated), "zero_ratings": sum(1 for r, _ in rated if r == 0),
           "train_before_overlap": len(train), "train_after_overlap": len(train_kept),
           "positives_after_overlap": sum(y for _, y in train_kept)},
    "snli": snli,
    "boolq": boolq,
}
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
print(json.dumps({k: v for k, v in expected.items() if k != "sst2_dev"}, indent=1))
