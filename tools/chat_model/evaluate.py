#!/usr/bin/env python3
"""Scores a chat model on held-out "What does WORD mean?" questions (made by make_data.py).

Each question is asked in ChatML with greedy decoding (`tessera generate`), and the answer is
judged against WordNet: it is correct when, for one of the word's senses, at least half of the
content words of that definition's main clause (the text before the first ';', without
parenthesized asides; content words: lower-cased words of three or more letters, minus a short
stop list and the word itself) appear in the answer. Prints and writes the accuracy per model
and every question with its answer.
"""
import argparse
import json
import pathlib
import re
import subprocess

STOP = set("""the and for with that this from into onto over under than then them they their there these those
which who whom whose what when where while being been have has had having does did doing not nor but
its it's any some such very more most much many few one two other another each every all both either
neither used using use especially usually often something someone somebody anything person people thing
things way ways make makes made can could would should may might must will shall also""".split())


def content_words(text: str, exclude: str = "") -> set:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in STOP and w != exclude}


def correct(answer: str, word: str, definitions) -> bool:
    said = content_words(answer, word)
    for d in definitions:
        main_clause = re.sub(r"\([^)]*\)", " ", d.split(";")[0])
        wanted = content_words(main_clause, word)
        if wanted and len(wanted & said) / len(wanted) >= 0.5:
            return True
    return False


def ask(tessera: str, model: str, question: str, max_tokens: int) -> str:
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    out = subprocess.run([tessera, "generate", "-m", model, "-p", prompt, "-n", str(max_tokens), "--temperature", "0",
                          "--json"], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"tessera generate failed: {out.stderr.strip()}")
    return json.loads(out.stdout)["text"].split("<|im_end|>")[0].strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", required=True)
    ap.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    ap.add_argument("--data", required=True, type=pathlib.Path, help="make_data.py's output folder")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", type=pathlib.Path)
    args = ap.parse_args()
    questions = [json.loads(line) for line in (args.data / "heldout.jsonl").read_text().splitlines()][:args.questions]
    report = {"judge": "correct when >= 50% of the content words of one WordNet definition's main clause appear in the answer",
              "questions": len(questions), "models": []}
    for model in args.model:
        answers = []
        for q in questions:
            answer = ask(args.tessera, model, q["question"], args.max_tokens)
            answers.append({"word": q["word"], "question": q["question"], "answer": answer,
                            "definitions": q["definitions"], "correct": correct(answer, q["word"], q["definitions"])})
        accuracy = sum(a["correct"] for a in answers) / max(1, len(answers))
        print(f"{model}: {accuracy:.0%} of {len(answers)} held-out definitions correct")
        report["models"].append({"model": model, "accuracy": accuracy, "answers": answers})
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
