//! SentencePiece `tokenizer.model` read directly, checked against the `sentencepiece` Python
//! package: the committed fixture (made by `scripts/sentencepiece_reference.py`) always, and a
//! freshly trained one when the reference venv has `sentencepiece`.

use std::path::{Path, PathBuf};
use std::process::Command;

use corenet_data::{
    load_tokenizer, Error, HfTokenizer, SentencePieceModel, SentencePieceTokenizer, TextTokenizer,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    vocab_size: usize,
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
    strings: Vec<String>,
    ids: Vec<Vec<u32>>,
    ids_with_bos: Vec<Vec<u32>>,
    pieces: Vec<Vec<String>>,
    decoded: Vec<String>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_fixture(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).expect("read fixture json");
    serde_json::from_str(&text).expect("parse fixture json")
}

/// Every string of the fixture must get exactly the library's ids, with and without BOS.
fn check_against(model: &Path, fixture: &Path) {
    let fx = read_fixture(fixture);
    let tok = SentencePieceTokenizer::from_file(model).expect("load SentencePiece model");
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    assert_eq!(i64::from(tok.bos_id()), fx.bos_id);
    assert_eq!(i64::from(tok.eos_id()), fx.eos_id);
    let pad = if fx.pad_id >= 0 {
        fx.pad_id
    } else {
        fx.vocab_size as i64
    };
    assert_eq!(i64::from(tok.pad_id()), pad);

    let mut mismatches = Vec::new();
    for (i, s) in fx.strings.iter().enumerate() {
        let ids = tok.encode(s).expect("encode");
        let with_bos = tok.encode_with_bos(s).expect("encode with bos");
        if ids != fx.ids[i] || with_bos != fx.ids_with_bos[i] {
            mismatches.push(format!(
                "{s:?}\n  sentencepiece: {:?}\n  pieces:        {:?}\n  corenet-data:  {ids:?}\n  with bos:      {with_bos:?} vs {:?}",
                fx.ids[i], fx.pieces[i], fx.ids_with_bos[i]
            ));
        }
        assert_eq!(with_bos.first(), Some(&tok.bos_id()), "BOS first for {s:?}");
        let text = tok.decode(&fx.ids[i]).expect("decode");
        assert_eq!(text, fx.decoded[i], "decode of {s:?}");
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} strings differ from sentencepiece ({}):\n{}",
        mismatches.len(),
        fx.strings.len(),
        model.display(),
        mismatches.join("\n")
    );
}

#[test]
fn committed_fixture_matches_sentencepiece() {
    let dir = fixtures();
    check_against(&dir.join("spm_bpe.model"), &dir.join("spm_bpe.json"));
}

#[test]
fn fixture_covers_byte_fallback_and_specials() {
    // Guards the fixture itself: it must exercise what the issue asks for.
    let fx = read_fixture(&fixtures().join("spm_bpe.json"));
    let pieces: Vec<&String> = fx.pieces.iter().flatten().collect();
    assert!(
        pieces.iter().any(|p| p.starts_with("<0x")),
        "no byte fallback"
    );
    assert!(fx.strings.iter().any(|s| s.contains("</s>")));
    assert!(fx.ids_with_bos.iter().all(|ids| ids.first() == Some(&1)));
}

#[test]
fn model_fields_decode() {
    let m = SentencePieceModel::from_file(&fixtures().join("spm_bpe.model")).expect("decode");
    assert_eq!(m.normalizer_spec.name, "identity");
    assert!(m.normalizer_spec.add_dummy_prefix);
    assert!(!m.normalizer_spec.remove_extra_whitespaces);
    assert!(m.trainer_spec.byte_fallback);
    assert_eq!(m.trainer_spec.vocab_size as usize, m.pieces.len());
    assert_eq!(m.pieces[0].piece, "<unk>");
    assert_eq!(m.pieces[1].piece, "<s>");
    assert_eq!(m.pieces[2].piece, "</s>");
    assert_eq!(m.pieces[3].piece, "<0x00>");
    assert_eq!(m.trainer_spec.pad_id, -1);
}

#[test]
fn load_tokenizer_picks_by_extension_and_tokenizer_json_round_trips() {
    let dir = fixtures();
    let spm = load_tokenizer(&dir.join("spm_bpe.model")).expect("load .model");
    let fx = read_fixture(&dir.join("spm_bpe.json"));

    // The equivalent tokenizer.json gives the same ids (except for literal special-token text,
    // which tokenizer.json cannot mark as plain text).
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("tokenizer.json");
    SentencePieceTokenizer::from_file(&dir.join("spm_bpe.model"))
        .expect("load")
        .save_tokenizer_json(&json)
        .expect("save tokenizer.json");
    let hf = load_tokenizer(&json).expect("load .json");
    assert_eq!(hf.bos_id(), spm.bos_id());
    assert_eq!(hf.eos_id(), spm.eos_id());
    let direct = HfTokenizer::from_file(&json).expect("HfTokenizer");
    for (i, s) in fx.strings.iter().enumerate() {
        if s.contains("<s>") || s.contains("</s>") || s.contains("<unk>") {
            continue;
        }
        assert_eq!(spm.encode(s).expect("encode"), fx.ids[i], "{s:?}");
        assert_eq!(
            hf.encode(s).expect("encode"),
            fx.ids[i],
            "tokenizer.json: {s:?}"
        );
        assert_eq!(direct.encode(s).expect("encode"), fx.ids[i]);
    }

    // A directory holding tokenizer.model.
    std::fs::copy(
        dir.join("spm_bpe.model"),
        tmp.path().join("tokenizer.model"),
    )
    .expect("copy");
    let from_dir = load_tokenizer(tmp.path()).expect("load dir");
    assert_eq!(from_dir.encode("hello world").expect("encode"), fx.ids[1]);

    // Other names are sniffed by their first byte.
    let sniffed = tmp.path().join("llama_tokenizer");
    std::fs::copy(dir.join("spm_bpe.model"), &sniffed).expect("copy");
    let sniffed = load_tokenizer(&sniffed).expect("load sniffed .model");
    assert_eq!(sniffed.encode("hello world").expect("encode"), fx.ids[1]);
    let sniffed_json = tmp.path().join("tok");
    std::fs::copy(&json, &sniffed_json).expect("copy");
    assert_eq!(
        load_tokenizer(&sniffed_json)
            .expect("load sniffed .json")
            .encode("hello world")
            .expect("encode"),
        fx.ids[1]
    );

    let other = tmp.path().join("tokenizer.txt");
    std::fs::write(&other, "x").expect("write");
    let err = load_tokenizer(&other).err().expect("unknown extension");
    assert!(err.to_string().contains("tokenizer.txt"), "{err}");
}

// ------------------------------------------------------------------------------------------
// Bad input: every error names the file.

fn load_err(path: &Path) -> Error {
    match SentencePieceTokenizer::from_file(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    }
}

#[test]
fn truncated_model_is_a_clear_error() {
    let bytes = std::fs::read(fixtures().join("spm_bpe.model")).expect("read");
    let tmp = tempfile::tempdir().expect("tempdir");
    for cut in [bytes.len() / 2, bytes.len() - 3, 5] {
        let path = tmp.path().join(format!("cut{cut}.model"));
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let err = load_err(&path);
        let msg = err.to_string();
        assert!(
            matches!(err, Error::SentencePieceDecode { .. }),
            "cut at {cut}: {msg}"
        );
        assert!(msg.contains(&format!("cut{cut}.model")), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
    }
}

#[test]
fn unigram_model_is_refused() {
    let path = fixtures().join("spm_unigram.model");
    let err = load_err(&path);
    let msg = err.to_string();
    assert!(matches!(err, Error::SentencePieceModel { .. }), "{msg}");
    assert!(msg.contains("spm_unigram.model"), "{msg}");
    assert!(msg.contains("UNIGRAM"), "{msg}");
    assert!(msg.contains("not supported"), "{msg}");
    let via_loader = load_tokenizer(&path)
        .err()
        .expect("refused by load_tokenizer too");
    assert!(via_loader.to_string().contains("UNIGRAM"));
}

#[test]
fn random_bytes_and_empty_and_json_files_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // xorshift bytes: deterministic garbage.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let cases: [(&str, &[u8]); 3] = [
        ("random.model", &garbage),
        ("empty.model", b""),
        (
            "tokenizer_json.model",
            br#"{"version": "1.0", "model": {}}"#,
        ),
    ];
    for (name, bytes) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let msg = load_err(&path).to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains("SentencePiece"), "{msg}");
    }
    let msg = load_err(&tmp.path().join("tokenizer_json.model")).to_string();
    assert!(msg.contains("JSON"), "{msg}");
    let msg = load_err(&tmp.path().join("missing.model")).to_string();
    assert!(msg.contains("missing.model"), "{msg}");
}

#[test]
fn missing_unk_is_a_clear_error() {
    // Re-type the <unk> piece as CONTROL by editing the decoded model.
    let path = fixtures().join("spm_bpe.model");
    let mut model = SentencePieceModel::from_file(&path).expect("decode");
    model.pieces[0].kind = corenet_data::sentencepiece::PieceType::Control;
    let err = match SentencePieceTokenizer::from_model(model, Path::new("no_unk.model")) {
        Ok(_) => panic!("a model without unk loaded"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains("no_unk.model") && msg.contains("missing unk"),
        "{msg}"
    );
}

// ------------------------------------------------------------------------------------------
// Live oracle: retrain with the Python package and compare again.

/// The reference interpreter (`CORENET_REF_PYTHON`, else the repo's `.venv-ref`), and whether
/// it can import `sentencepiece`.
fn reference_python() -> (PathBuf, bool) {
    let python = std::env::var_os("CORENET_REF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-ref/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import sentencepiece"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    (python, ok)
}

#[test]
fn regenerated_models_match_sentencepiece() {
    let (python, available) = reference_python();
    if !available {
        assert!(
            std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
            "{} cannot import sentencepiece, and CORENET_REQUIRE_REFERENCE is set",
            python.display()
        );
        eprintln!(
            "skipping: {} cannot import sentencepiece (pip install sentencepiece into \
             .venv-ref, or set CORENET_REF_PYTHON)",
            python.display()
        );
        return;
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sentencepiece_reference.py");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--out")
        .arg(tmp.path())
        .arg("--with-nfkc")
        .args(["--random-strings", "2000"])
        .output()
        .expect("run reference script");
    assert!(
        out.status.success(),
        "reference script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_against(
        &tmp.path().join("spm_bpe.model"),
        &tmp.path().join("spm_bpe.json"),
    );
    // SentencePiece's default normalizer: nmt_nfkc charsmap and extra-whitespace removal.
    check_against(
        &tmp.path().join("spm_bpe_nfkc.model"),
        &tmp.path().join("spm_bpe_nfkc.json"),
    );
}
