#!/usr/bin/env python3
"""The `sentencepiece` Python package as the oracle for corenet-data's SentencePiece reader.

Trains small SentencePiece models on a text file (or on synthetic text generated here with a
fixed seed), encodes a fixed list of test strings with the library and writes, into --out:

  spm_bpe.model        BPE, byte_fallback, LLaMA-2-like normalizer settings (see below)
  spm_bpe.json         {"model", "strings", "ids", "ids_with_bos", "pieces"} from spm_bpe.model
  spm_unigram.model    a tiny UNIGRAM model (corenet-data must refuse it with a clear error)
  with --with-nfkc also:
  spm_bpe_nfkc.model   BPE with SentencePiece's default normalizer (nmt_nfkc + collapsing of
                       extra whitespace); its precompiled charsmap is ~240 KB, so it is only
                       made on demand (the Rust test regenerates it in a temp dir), not committed
  spm_bpe_nfkc.json    the same fixture layout for it

The committed model uses normalization_rule_name=identity, as LLaMA-2's tokenizer.model does:
that keeps the oracle free of NFKC differences (the text reaches the BPE exactly as given, so
accents in NFD form stay decomposed and fullwidth forms are not folded). It also sets
remove_extra_whitespaces=False and keeps add_dummy_prefix=True, again as LLaMA-2 does.
character_coverage=0.9995 leaves the rarest training characters out of the vocabulary, so they
(and every character never seen in training: emoji, rare CJK, math symbols) are encoded through
the <0xXX> byte-fallback pieces.

Usage: scripts/sentencepiece_reference.py --out crates/data/tests/fixtures [--text FILE]
       [--with-nfkc] [--random-strings N]
"""
import argparse
import json
import os
import random
import tempfile

import sentencepiece as spm

# Strings every model is checked on. Keep in sync with nothing: the Rust test reads them from
# the fixture.
TEST_STRINGS = [
    "Hello world",
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "   ",
    "a",
    "  leading spaces",
    "trailing spaces   ",
    "multiple   spaces\tand a tab",
    "line one\nline two\n",
    "\n",
    "café naïve résumé",
    "cafe\u0301 (decomposed accent)",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "東京は日本の首都です。",
    "中文字符和日本語",
    "emoji: 😀🎉👍🏽 and family 👨\u200d👩\u200d👧",
    "rare symbols: ∮ ⊛ ℵ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ ‰",
    "Привет, мир!",
    "mixed: naïve 東京 😀 end",
    "numbers 1234567890 and 3.14159",
    "literal specials <s> </s> <unk> <pad>",
    "literal byte piece <0x41> and ▁ meta",
    "x" * 40,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "CamelCaseIdentifier snake_case_identifier kebab-case",
    "def f(x):\n    return x ** 2  # square\n",
    "\u00a0non-breaking\u00a0space and \u3000 ideographic space",
    "tab\tonly",
    "ÿ",
    "\u0000nul and \u007fdel",
]

WORDS = (
    "the of and to in is was for on that with as by at from his her they this be are it an "
    "which or had not but were one all their been has have we who would there more when will "
    "king queen castle storm night river sword crown forest mountain village market harbour "
    "quick brown fox jumps over lazy dog hello world data token model train learn language "
    "café naïve résumé façade coöperate jalapeño über straße garçon déjà vu "
    "hola adiós niño señor mañana Привет мир спасибо да нет "
    "東京 日本 首都 中文 字符 語 学生 先生 大学 電車"
).split()


def synthetic_text(seed: int, n_lines: int = 3000) -> str:
    """Deterministic training text: word salad with punctuation, digits, code and a few rare
    characters (so character_coverage leaves some of them out)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        n = rng.randint(4, 18)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.append(str(rng.randint(0, 99999)))
        if rng.random() < 0.1:
            words.append(f"x_{rng.randint(0, 9)} = f(y) ** 2")
        line = " ".join(words) + rng.choice([".", ",", "!", "?", ";", ":", ""])
        if i % 500 == 0:
            line += " ☃"  # rare: below the 0.9995 coverage cut
        lines.append(line)
    return "\n".join(lines) + "\n"


def random_strings(seed: int, n: int) -> list:
    """Seeded random strings mixing training words, whitespace runs, literal U+2581, specials and
    characters from many scripts (most of them byte fallback)."""
    rng = random.Random(seed)
    ranges = [
        (0x20, 0x7E),  # ASCII printable
        (0xA0, 0x17F),  # Latin-1 supplement, Latin extended-A
        (0x300, 0x36F),  # combining marks
        (0x400, 0x44F),  # Cyrillic
        (0x3040, 0x30FF),  # kana
        (0x4E00, 0x4E80),  # CJK
        (0xFF01, 0xFF5E),  # fullwidth forms (NFKC folds them)
        (0x1F300, 0x1F64F),  # emoji
        (0x2000, 0x206F),  # general punctuation, odd spaces
    ]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.45:
                parts.append(rng.choice(WORDS))
            elif r < 0.6:
                parts.append(" " * rng.randint(1, 4))
            elif r < 0.65:
                parts.append(rng.choice(["\t", "\n", "\u2581", "<s>", "</s>", "\u3000"]))
            else:
                lo, hi = rng.choice(ranges)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 4))))
        out.append(("" if rng.random() < 0.7 else " ").join(parts))
    return out


def train(text_path: str, prefix: str, **kwargs) -> str:
    spm.SentencePieceTrainer.train(
        input=text_path,
        model_prefix=prefix,
        num_threads=1,
        minloglevel=2,
        **kwargs,
    )
    return prefix + ".model"


def fixture(model_path: str, name: str, strings: list) -> dict:
    sp = spm.SentencePieceProcessor(model_file=model_path)
    ids = [sp.encode(s, out_type=int) for s in strings]
    ids_with_bos = [sp.encode(s, out_type=int, add_bos=True) for s in strings]
    pieces = [sp.encode(s, out_type=str) for s in strings]
    return {
        "model": name,
        "sentencepiece_version": spm.__version__,
        "vocab_size": sp.get_piece_size(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id(),
        "pad_id": sp.pad_id(),
        "strings": strings,
        "ids": ids,
        "ids_with_bos": ids_with_bos,
        "pieces": pieces,
        "decoded": [sp.decode(i) for i in ids],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--text", help="training text file (default: synthetic text, fixed seed)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--with-nfkc", action="store_true")
    parser.add_argument(
        "--random-strings",
        type=int,
        default=0,
        help="append this many seeded random strings to the test strings (for live checks)",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    strings = TEST_STRINGS + random_strings(args.seed + 1, args.random_strings)

    with tempfile.TemporaryDirectory() as tmp:
        text_path = args.text
        if text_path is None:
            text_path = os.path.join(tmp, "train.txt")
            with open(text_path, "w", encoding="utf-8") as f:
                f.write(synthetic_text(args.seed))

        common = dict(
            vocab_size=args.vocab_size,
            character_coverage=0.9995,
            byte_fallback=True,
            # LLaMA-2's ids: <unk>=0, <s>=1, </s>=2, no pad.
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
        )
        models = [
            (
                "spm_bpe",
                dict(
                    model_type="bpe",
                    # identity: no NFKC, so the oracle and the Rust side see the same text.
                    normalization_rule_name="identity",
                    remove_extra_whitespaces=False,
                    add_dummy_prefix=True,
                    **common,
                ),
            )
        ]
        if args.with_nfkc:
            models.append(("spm_bpe_nfkc", dict(model_type="bpe", **common)))

        for name, kwargs in models:
            model = train(text_path, os.path.join(tmp, name), **kwargs)
            data = fixture(model, name + ".model", strings)
            with open(model, "rb") as src, open(os.path.join(args.out, name + ".model"), "wb") as dst:
                dst.write(src.read())
            with open(os.path.join(args.out, name + ".json"), "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=1)
                f.write("\n")

        # A tiny UNIGRAM model: the reader must say UNIGRAM is unsupported.
        model = train(
            text_path,
            os.path.join(tmp, "spm_unigram"),
            model_type="unigram",
            vocab_size=150,
            normalization_rule_name="identity",
            character_coverage=0.9995,
        )
        with open(model, "rb") as src, open(os.path.join(args.out, "spm_unigram.model"), "wb") as dst:
            dst.write(src.read())


if __name__ == "__main__":
    main()
