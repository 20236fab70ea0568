#!/usr/bin/env python3
"""Fixtures for reading a user's own data (tests/train/user_data.rs) and for chat templates.

Run by hand (not by CI), after `gralora fetch smollm2`:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers pyarrow gguf
    /tmp/refenv/bin/python scripts/user_data_fixtures.py [GRALORA_HOME]
        -> tests/fixtures/user/

Writes:
- reviews.{jsonl,csv,tsv,jsonl.gz,parquet,arrow} and reviews_array.json: the same 24 labelled sentences
  (string labels), each format written by its standard library (json, csv, gzip, pyarrow);
  reviews_columns.csv: the same rows under other column names (sentence, sentiment);
  reviews_nested.jsonl: under doc.review and doc.gold;
- pairs.tsv: text pairs with integer labels (premise, hypothesis, label);
- scores.csv: STS-B-like scored pairs (sentence1, sentence2, score);
- sft_messages.jsonl, sft_messages.parquet (a list<struct<role, content>> column, as on the Hub),
  sft_alpaca.json (an array), sft_completion.csv, sft_text.jsonl;
- chat.json: for SmolLM2's own template (from the GGUF metadata, read by transformers' GGUF
  loader) and for the template in tokenizer_config.json (another family's: BOS token,
  raise_exception, .strip(), namespace), each conversation's rendered text, token ids
  (`apply_chat_template(tokenize=True)`), the generation prompt's ids, and the assistant-token mask
  from `return_assistant_tokens_mask=True` on the template with `{% generation %}` around each
  assistant turn's text and closing tokens (what gralora finds by rendering prefixes);
- tokenizer_config.json: that second template, as a Hugging Face snapshot would hold it.
"""
import csv
import gzip
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "user"

REVIEWS = [
    ("A warm, funny and beautifully acted film.", "positive"),
    ("The plot is a mess and the jokes fall flat.", "negative"),
    ("I loved every minute of it.", "positive"),
    ("Tedious, overlong and badly edited.", "negative"),
    ("A triumph of quiet, patient storytelling.", "positive"),
    ("Nothing here works, not even the music.", "negative"),
    ("Sharp writing and a terrific lead performance.", "positive"),
    ("It wastes a talented cast on a lazy script.", "negative"),
    ("Moving, honest and often very funny.", "positive"),
    ("A dull, joyless slog.", "negative"),
    ("The best thing I have seen all year.", "positive"),
    ("Clumsy, loud and instantly forgettable.", "negative"),
    ("Gorgeous to look at and a joy to watch.", "positive"),
    ("The dialogue is wooden, the pacing worse.", "negative"),
    ("Smart, tender, and full of surprises.", "positive"),
    ("An insult to the book it is based on.", "negative"),
    ("A delightful comedy with real heart.", "positive"),
    ("I checked my watch every five minutes.", "negative"),
    ("Bold, original, and superbly made.", "positive"),
    ("A confused film that goes nowhere.", "negative"),
    ("Charming from the first scene to the last.", "positive"),
    ("Painfully slow and utterly predictable.", "negative"),
    # Quotes, a comma, a tab-free newline and non-ASCII text travel through every format.
    ('She said "wonderful", and she was right.', "positive"),
    ("Ni drôle ni touchant: raté, hélas.\nUne déception.", "negative"),
]

PAIRS = [
    ("A man is playing a guitar.", "A person plays an instrument.", 1),
    ("A man is playing a guitar.", "Nobody is making music.", 0),
    ("Two dogs run on the beach.", "Animals are outside.", 1),
    ("Two dogs run on the beach.", "The dogs are asleep indoors.", 0),
    ("A child reads a book.", "Someone is reading.", 1),
    ("A child reads a book.", "The child is swimming.", 0),
]

# STS-B-like scored pairs (0 = unrelated, 5 = the same meaning).
SCORED = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A man is playing a guitar.", "A woman is slicing onions.", 0.2),
    ("Two dogs run on the beach.", "Dogs are running on sand.", 4.2),
    ("Two dogs run on the beach.", "A cat sleeps on a sofa.", 0.6),
    ("A child reads a book.", "A kid is reading.", 4.5),
    ("A child reads a book.", "The stock market fell today.", 0.0),
    ("The train left the station.", "The train departed.", 4.6),
    ("The train left the station.", "A plane is landing.", 1.2),
    ("She is cooking dinner.", "She prepares a meal.", 4.0),
    ("She is cooking dinner.", "He is fixing a bike.", 0.4),
    ("It is raining heavily.", "There is a downpour.", 4.4),
    ("It is raining heavily.", "The sun is shining.", 0.8),
    ("A boy kicks a ball.", "A boy plays football.", 3.6),
    ("A boy kicks a ball.", "A man is driving a truck.", 0.3),
    ("The cat chased the mouse.", "A mouse was chased by a cat.", 4.9),
    ("The cat chased the mouse.", "Birds fly south in winter.", 0.1),
]

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
        {"role": "assistant", "content": "Green."},
    ],
    [
        {"role": "user", "content": "  Say hi.  "},
        {"role": "assistant", "content": "Hi! Nice to meet you — how can I help?"},
    ],
]

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
]

COMPLETIONS = [
    ("The opposite of hot is", " cold."),
    ("Two plus two equals", " four."),
    ("The first month of the year is", " January."),
]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Rust is a systems programming language.",
    "Paris is the capital of France.",
]

# Another family's template (Zephyr-like, with the features real templates use).
OTHER_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "{% set ns.n = ns.n + 1 %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'].strip() + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def with_generation_tags(template: str, kind: str) -> str:
    """The template with {% generation %} around each assistant turn's text and closing tokens."""
    if kind == "smollm2":
        old = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        assert old in template, "SmolLM2's template changed"
        new = (
            "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}"
            "{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
            "{% else %}" + old + "{% endif %}"
        )
        return template.replace(old, new)
    old = "{{ '<|' + message['role'] + '|>\n' + message['content'].strip() + eos_token + '\n' }}"
    new = (
        "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
        "{% generation %}{{ message['content'].strip() + eos_token + '\n' }}{% endgeneration %}"
        "{% else %}" + old + "{% endif %}"
    )
    assert old in template
    return template.replace(old, new)


def write_classification():
    rows = [{"text": t, "label": l} for t, l in REVIEWS]
    with open(OUT / "reviews.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with gzip.open(OUT / "reviews.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(OUT / "reviews_array.json", "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=1)
    for name, delim in [("reviews.csv", ","), ("reviews.tsv", "\t")]:
        with open(OUT / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["text", "label"])
            w.writerows(REVIEWS)
    with open(OUT / "reviews_columns.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "sentence", "sentiment"])
        w.writerows([(i, t, l) for i, (t, l) in enumerate(REVIEWS)])
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, OUT / "reviews.parquet", row_group_size=10)
    # An Arrow IPC stream, as `datasets` keeps in its cache and writes with save_to_disk.
    with pa.OSFile(str(OUT / "reviews.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=10)
    # Nested fields, reached with dotted column names.
    with open(OUT / "reviews_nested.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": i, "doc": {"review": r["text"], "gold": r["label"]}}, ensure_ascii=False) + "\n")
    with open(OUT / "scores.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "score"])
        w.writerows(SCORED)
    with open(OUT / "pairs.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["premise", "hypothesis", "label"])
        w.writerows(PAIRS)


# A small instruction set for the training test: one answer pattern the model can learn.
CAPITALS = [
    ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Hungary", "Budapest"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Czechia", "Prague"),
    ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Estonia", "Tallinn"), ("Latvia", "Riga"),
    ("Lithuania", "Vilnius"), ("Iceland", "Reykjavik"), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Cuba", "Havana"),
    ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Thailand", "Bangkok"),
]


def write_sft():
    with open(OUT / "sft_train.jsonl", "w", encoding="utf-8") as f:
        for country, city in CAPITALS:
            conv = [
                {"role": "user", "content": f"Capital of {country}?"},
                {"role": "assistant", "content": f"{country} -> {city}."},
            ]
            f.write(json.dumps({"messages": conv}) + "\n")
    with open(OUT / "sft_messages.jsonl", "w", encoding="utf-8") as f:
        for c in CONVERSATIONS:
            f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
    pq.write_table(
        pa.Table.from_pylist([{"messages": c} for c in CONVERSATIONS]),
        OUT / "sft_messages.parquet",
    )
    with open(OUT / "sft_alpaca.json", "w", encoding="utf-8") as f:
        json.dump(ALPACA, f, ensure_ascii=False, indent=1)
    with open(OUT / "sft_completion.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion"])
        w.writerows(COMPLETIONS)
    with open(OUT / "sft_text.jsonl", "w", encoding="utf-8") as f:
        for t in TEXTS:
            f.write(json.dumps({"text": t}) + "\n")


def chat_cases(tok, template, kind):
    tagged = with_generation_tags(template, kind)
    cases = []
    for conv in CONVERSATIONS:
        text = tok.apply_chat_template(conv, chat_template=template, tokenize=False)
        ids = tok.apply_chat_template(conv, chat_template=template, tokenize=True, return_dict=True)
        masked = tok.apply_chat_template(
            conv,
            chat_template=tagged,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert masked["input_ids"] == ids["input_ids"], "the tagged template renders the same"
        prompt = tok.apply_chat_template(
            conv[:-1], chat_template=template, tokenize=True, add_generation_prompt=True,
            return_dict=True,
        )
        cases.append(
            {
                "messages": conv,
                "text": text,
                "ids": ids["input_ids"],
                "assistant_mask": masked["assistant_masks"],
                "prompt_ids": prompt["input_ids"],
            }
        )
    return cases


def write_chat(home: Path):
    from transformers import AutoTokenizer

    gguf = home / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    own = tok.chat_template
    config = {
        "bos_token": {"content": tok.bos_token, "lstrip": False, "normalized": False},
        "eos_token": tok.eos_token,
        "chat_template": OTHER_TEMPLATE,
    }
    with open(OUT / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
    out = {
        "tokenizer": f"transformers {__import__('transformers').__version__}, GGUF loader",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "smollm2": chat_cases(tok, own, "smollm2"),
        "tokenizer_config": chat_cases(tok, OTHER_TEMPLATE, "other"),
    }
    with open(OUT / "chat.json", "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


def main():
    home = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("GRALORA_HOME", Path.home() / ".cache" / "gralora"))
    OUT.mkdir(parents=True, exist_ok=True)
    write_classification()
    write_sft()
    write_chat(home)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
