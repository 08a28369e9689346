//! Numerical parity with an independent PyTorch implementation (scripts/openelm_reference.py).
//! The committed fixture is always checked; when an importable torch is found (the reference
//! venv from `scripts/setup.sh --reference`), the fixture is also regenerated and checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use corenet_model::weights::tensor_from_view;
use corenet_model::{OpenElm, OpenElmConfig};
use tch::{nn, Device, Tensor};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load_io(path: &Path) -> (Tensor, Tensor) {
    let bytes = std::fs::read(path).expect("read fixture io");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("fixture io parses");
    let get =
        |name: &str| tensor_from_view(path, name, &file.tensor(name).expect(name)).expect(name);
    (get("input_ids"), get("logits"))
}

fn check_fixture(dir: &Path) {
    let config_text = std::fs::read_to_string(dir.join("openelm_tiny.json")).expect("config");
    let config: OpenElmConfig = serde_json::from_str(&config_text).expect("config parses");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OpenElm::new(&vs.root(), &config).expect("valid config");
    model
        .load_safetensors(&dir.join("openelm_tiny.safetensors"))
        .expect("weights load");
    let (ids, expected) = load_io(&dir.join("openelm_tiny_io.safetensors"));
    let logits = tch::no_grad(|| model.forward(&ids)).expect("forward");
    assert_eq!(logits.size(), expected.size());
    let scale = expected.abs().max().double_value(&[]);
    let err = (&logits - &expected).abs().max().double_value(&[]) / scale;
    assert!(err < 1e-5, "{}: relative error {err:e}", dir.display());
}

fn reference_python() -> Option<PathBuf> {
    let root = workspace_root();
    [
        root.join(".venv-ref/bin/python"),
        root.join(".venv/bin/python"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .find(|p| {
        Command::new(p)
            .args(["-c", "import torch, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn matches_committed_pytorch_fixture() {
    check_fixture(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
}

#[test]
fn matches_freshly_generated_pytorch_fixture() {
    let Some(python) = reference_python() else {
        assert!(
            std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
            "no importable torch, and CORENET_REQUIRE_REFERENCE is set"
        );
        eprintln!("skipped: no importable torch (run scripts/setup.sh --reference)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(python)
        .arg(workspace_root().join("scripts/openelm_reference.py"))
        .args(["--out", &dir.path().to_string_lossy(), "--seed", "99"])
        .status()
        .expect("run reference script");
    assert!(status.success(), "reference script failed");
    check_fixture(dir.path());
}
