#!/usr/bin/env python3
"""Builds the training data of tessera-dbrx-tiny-instruct from Debian packages.

Sources (installed by scripts/setup; licenses in the model card):
  wordnet-base  /usr/share/wordnet   WordNet 3.0 (Princeton WordNet license: use, copy, modify and
                                     distribute for any purpose, with the copyright notice)
  fortunes-min  /usr/share/games/fortunes/{fortunes,literature,riddles}   BSD

Output folder:
  corpus/dictionary.jsonl   pre-training text about the words, in --copies differently shuffled
                            copies: for every word its dictionary entry (every kept sense with its
                            gloss, example and synonyms) and the same senses said in sentences
                            ("The word dog (noun) means ..."); and for the fine-tuning words only,
                            the question and answer as plain text ("Question: What does dog
                            mean?\nAnswer: ..."). Mixing some questions into pre-training, and
                            stating each fact in more than one form, is what lets the model answer
                            questions later about words it only read about.
  corpus/fortunes.jsonl     one document per fortune (pre-training)
  eval/dictionary.jsonl     the entries of --eval-words other words, kept out of the corpus and
                            the chat set: held-out text for perplexity
  chat_train.jsonl          ChatML question/answer pairs about the words (fine-tuning)
  heldout.jsonl             "What does WORD mean?" questions whose words have no question in
                            chat_train.jsonl nor in the corpus (their entries and sentences are
                            in the corpus): the evaluation set
  stats.json                counts and sizes, for the model card

The word list is the --words most frequent lemmas in WordNet's sense-tagged counts (cntlist.rev),
with at most --senses senses each. Everything is deterministic for a given --seed.
"""
import argparse
import collections
import json
import pathlib
import random
import re

WORDNET = pathlib.Path("/usr/share/wordnet")
FORTUNES = pathlib.Path("/usr/share/games/fortunes")
POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
FILES = {"noun": "data.noun", "verb": "data.verb", "adjective": "data.adj", "adverb": "data.adv"}


def lemma_text(word: str) -> str:
    return re.sub(r"\((a|p|ip)\)$", "", word).replace("_", " ")


SS_TYPE = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}


def read_synsets():
    """offset+pos -> (pos name, [lemmas], definition, [examples], {lemma: sense id}).

    A sense id is the start of WordNet's sense key, "lemma%type:lexfile:lexid", which is how
    cntlist.rev counts how often each sense was seen in tagged text."""
    synsets = {}
    for pos_name, file in FILES.items():
        for line in (WORDNET / file).read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # the license header
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, ss_type, count = fields[0], fields[2], int(fields[3], 16)
            lemmas = [lemma_text(fields[4 + 2 * i]) for i in range(count)]
            sense_ids = {}
            for i in range(count):
                raw = re.sub(r"\((a|p|ip)\)$", "", fields[4 + 2 * i]).lower()
                sense_ids[lemmas[i]] = f"{raw}%{SS_TYPE[ss_type]}:{fields[1]}:{int(fields[5 + 2 * i], 16):02d}"
            parts = [p.strip() for p in gloss.strip().split(";")]
            definition = "; ".join(p for p in parts if not p.startswith('"')).strip()
            examples = [p.strip('"').strip() for p in parts if p.startswith('"') and len(p) > 3]
            definition = definition.rstrip(". ")
            synsets[(offset, ss_type if ss_type != "s" else "a")] = (POS[ss_type], lemmas, definition, examples, sense_ids)
    return synsets


def read_sense_counts():
    """sense id ("lemma%type:lexfile:lexid") -> times seen in WordNet's sense-tagged texts."""
    counts = collections.Counter()
    for line in (WORDNET / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, _, count = line.split()
        counts[":".join(key.split(":")[:3])] += int(count)
    return counts


def build_entries(words: int, max_senses: int):
    synsets = read_synsets()
    counts = read_sense_counts()
    # Lower-case lemmas only (common words, not names): lemma -> [(count, synset key)].
    by_lemma = collections.defaultdict(list)
    for key, (_, lemmas, _, _, sense_ids) in synsets.items():
        for lemma in lemmas:
            if re.fullmatch(r"[a-z]+", lemma) and len(lemma) > 2:
                by_lemma[lemma].append((counts.get(sense_ids[lemma], 0), key))
    total = {lemma: sum(c for c, _ in senses) for lemma, senses in by_lemma.items()}
    ranked = sorted((w for w in total if total[w] > 0), key=lambda w: (-total[w], w))
    entries = {}
    for lemma in ranked[:words]:
        senses = []
        # The most used senses first; ties (unseen senses) in WordNet's order.
        ordered = sorted(enumerate(by_lemma[lemma]), key=lambda x: (-x[1][0], x[0]))
        for _, (_, key) in ordered[:max_senses]:
            pos, lemmas, definition, examples, _ = synsets[key]
            synonyms = [s for s in lemmas if s.lower() != lemma][:4]
            example = next((e for e in examples if lemma in e.lower()), None)
            senses.append({"pos": pos, "definition": definition, "synonyms": synonyms, "example": example})
        entries[lemma] = senses
    return entries


def dictionary_text(word: str, senses) -> str:
    # "Dictionary entry: " puts a space before the headword, so it is the same token as in
    # questions ("What does dog mean?") and answers ("The word dog ...").
    lines = [f"Dictionary entry: {word}"]
    for i, s in enumerate(senses, 1):
        line = f"{i}. ({s['pos']}) {s['definition']}."
        if s["example"]:
            line += f' Example: "{s["example"]}".'
        if s["synonyms"]:
            line += f" Synonyms: {', '.join(s['synonyms'])}."
        lines.append(line)
    return "\n".join(lines)


def as_a(pos: str) -> str:
    return f"As {'an' if pos[0] in 'aeiou' else 'a'} {pos}"


def meaning_answer(word: str, senses) -> str:
    answer = f"The word {word} ({senses[0]['pos']}) means {senses[0]['definition']}."
    if len(senses) > 1:
        answer += f" {as_a(senses[1]['pos'])}, {word} also means {senses[1]['definition']}."
    return answer


def sentences_text(word: str, senses) -> str:
    # The answer's own words, plus the senses the answer leaves out.
    text = meaning_answer(word, senses)
    for s in senses[2:]:
        text += f" {as_a(s['pos'])}, {word} can also mean {s['definition']}."
    return text


def reversed_text(word: str, senses) -> str:
    # The meaning first and the word last, so that what the word means is tied to the word's
    # own token, not only to the tokens after it.
    s = senses[0]
    return f"{s['definition'][0].upper()}{s['definition'][1:]}: that is what the {s['pos']} {word} means."


def usage_text(word: str, senses) -> str:
    for s in senses:
        if s["example"]:
            return f"In \"{s['example']}\", the word {word} means {s['definition']}."
    return f"Meaning of {word}: {senses[0]['definition']}."


QUESTIONS = ["What does {w} mean?", "What does the word {w} mean?", "Define {w}.", "What is the meaning of {w}?"]


def question_texts(word: str, senses) -> list:
    # Every phrasing, so that the answer has to find the word at a different distance each time.
    return [f"Question: {q.format(w=word)}\nAnswer: {meaning_answer(word, senses)}" for q in QUESTIONS]


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def read_fortunes():
    out = []
    for name in ("fortunes", "literature", "riddles"):
        path = FORTUNES / name
        if path.exists():
            for block in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
                block = block.strip()
                if 20 <= len(block) <= 1200:
                    out.append(block)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", required=True, type=pathlib.Path)
    ap.add_argument("--words", type=int, default=4000, help="most frequent lemmas kept")
    ap.add_argument("--senses", type=int, default=2, help="senses kept per lemma")
    ap.add_argument("--heldout", type=int, default=200, help="words whose questions are held out")
    ap.add_argument("--eval-words", type=int, default=100, help="words whose entries are held out of the corpus")
    ap.add_argument("--copies", type=int, default=2, help="shuffled copies of the dictionary documents")
    ap.add_argument("--fortunes", type=int, default=1000, help="fortunes kept at most")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    for needed in (WORDNET / "data.noun", WORDNET / "cntlist.rev"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: install wordnet-base (scripts/setup does)")

    rng = random.Random(args.seed)
    entries = build_entries(args.words, args.senses)
    words = sorted(entries)
    rng.shuffle(words)
    held_text = sorted(words[:args.eval_words])
    words = words[args.eval_words:]
    heldout, trained = sorted(words[:args.heldout]), sorted(words[args.heldout:])

    corpus = args.out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    documents = []
    for word in sorted(set(entries) - set(held_text)):
        documents += [f(word, entries[word]) for f in (dictionary_text, sentences_text, reversed_text, usage_text)]
    for word in trained:
        documents += question_texts(word, entries[word])
    # The trainer packs the stream into fixed windows, so a document that straddles a window
    # edge is never seen whole; copies in other orders put every document whole in some window.
    with open(corpus / "dictionary.jsonl", "w") as f:
        for _ in range(args.copies):
            rng.shuffle(documents)
            for text in documents:
                f.write(json.dumps({"text": text}) + "\n")
    (args.out / "eval").mkdir(exist_ok=True)
    with open(args.out / "eval" / "dictionary.jsonl", "w") as f:
        for word in held_text:
            f.write(json.dumps({"text": dictionary_text(word, entries[word])}) + "\n")
    fortunes = read_fortunes()
    fortunes = sorted(rng.sample(fortunes, min(args.fortunes, len(fortunes))))
    with open(corpus / "fortunes.jsonl", "w") as f:
        for text in fortunes:
            f.write(json.dumps({"text": text}) + "\n")

    pairs = []
    for word in trained:
        senses = entries[word]
        pairs.append(chat(rng.choice(QUESTIONS).format(w=word), meaning_answer(word, senses)))
        synonyms = [s for sense in senses for s in sense["synonyms"]]
        if synonyms:
            pairs.append(chat(f"Give a synonym of {word}.", f"A synonym of {word} is {synonyms[0]}."))
        example = next((s["example"] for s in senses if s["example"]), None)
        if example:
            pairs.append(chat(f"Use {word} in a sentence.", f"{example[0].upper()}{example[1:]}."))
    rng.shuffle(pairs)
    with open(args.out / "chat_train.jsonl", "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    with open(args.out / "heldout.jsonl", "w") as f:
        for word in heldout:
            f.write(json.dumps({"word": word, "question": f"What does {word} mean?",
                                "definitions": [s["definition"] for s in entries[word]]}) + "\n")
    stats = {"words": len(entries), "copies": args.copies, "senses": sum(len(s) for s in entries.values()), "heldout_words": len(heldout),
             "eval_words": len(held_text), "trained_words": len(trained),
             "chat_pairs": len(pairs), "fortunes": len(fortunes),
             "dictionary_bytes": (corpus / "dictionary.jsonl").stat().st_size,
             "fortunes_bytes": (corpus / "fortunes.jsonl").stat().st_size}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
