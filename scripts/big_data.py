#!/usr/bin/env python3
"""Write a large labelled JSON Lines file for measuring how gralora reads big data.

Each row is {"text": <20-60 words>, "label": "negative"|"positive"}, drawn from a fixed word
list with a fixed seed, until the file reaches --mib MiB (default 1024). Standard library only.

    python3 scripts/big_data.py /tmp/big.jsonl --mib 1024
    /usr/bin/time -v gralora train --model minilm --data /tmp/big.jsonl --max-train 64 --max-eval 64
"""

import argparse
import json
import random

WORDS = (
    "the a film movie story plot actor actress scene music score script director camera light "
    "dark funny sad warm cold slow fast long short brilliant dull clever tired fresh stale "
    "moving flat sharp vague honest false gentle brutal quiet loud bright grim tender cruel "
    "and but or so yet because while although when then never always often rarely"
).split()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    limit = args.mib << 20
    written = rows = 0
    with open(args.out, "w", encoding="utf-8") as f:
        while written < limit:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            line = json.dumps({"text": text, "label": rng.choice(["negative", "positive"])}) + "\n"
            f.write(line)
            written += len(line.encode())
            rows += 1
    print(f"{args.out}: {rows} rows, {written / (1 << 20):.0f} MiB")


if __name__ == "__main__":
    main()
