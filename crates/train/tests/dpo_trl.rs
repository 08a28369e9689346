//! Our DPO losses against the `trl` library's (scripts/dpo_reference.py runs trl 1.16's own
//! `DPOTrainer._compute_loss`) on identical policy and reference log-probabilities: sigmoid,
//! hinge and IPO losses, their gradients with respect to every token's log-probability, and the
//! rewards, margins, accuracy and log-probabilities trl logs, within 1e-6.

use std::path::{Path, PathBuf};
use std::process::Command;

use corenet_train::step::generator;
use corenet_train::step::preference::{preference_loss, DpoConfig, PreferenceLoss, SequenceScores};
use tch::{Device, Kind, Tensor};

const BETA: f64 = 0.1;

fn python_with_trl() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-ref/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import trl, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
        "no .venv-ref with trl, and CORENET_REQUIRE_REFERENCE is set (scripts/setup.sh --reference)"
    );
    eprintln!("skipped: no .venv-ref with trl (scripts/setup.sh --reference)");
    None
}

/// Relative to the larger of 1 and the reference value.
fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) {
    let theirs = theirs.to_kind(Kind::Double);
    let diff = (ours.to_kind(Kind::Double) - &theirs).abs();
    let scale = theirs.abs().clamp_min(1.0);
    let worst = (diff / scale).max().double_value(&[]);
    assert!(worst <= 1e-6, "{what}: relative difference {worst:e}");
}

#[test]
fn losses_gradients_and_rewards_equal_trl() {
    let Some(python) = python_with_trl() else {
        return;
    };
    let (pairs, len) = (6i64, 12i64);
    let opts = (Kind::Float, Device::Cpu);
    let (token, mask, reference) = generator::seeded(7, || {
        let token = -Tensor::rand([2 * pairs, len], opts) * 4.0;
        let mask = Tensor::rand([2 * pairs, len], opts)
            .gt(0.4)
            .to_kind(Kind::Float);
        // Every row keeps an answer token.
        let _ = mask.select(1, len - 1).fill_(1.0);
        let reference = -Tensor::rand([2 * pairs], opts) * 20.0;
        (token, mask, reference)
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, output) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    Tensor::write_safetensors(
        &[
            ("token", &token),
            ("mask", &mask),
            ("reference", &reference),
        ],
        &input,
    )
    .expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/dpo_reference.py");
    let run = Command::new(python)
        .arg(script)
        .args([&input, &output])
        .arg(BETA.to_string())
        .output()
        .expect("run the trl oracle");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&output)
        .expect("read")
        .into_iter()
        .collect();
    for (loss, name) in [
        (PreferenceLoss::Sigmoid, "sigmoid"),
        (PreferenceLoss::Hinge, "hinge"),
        (PreferenceLoss::Ipo, "ipo"),
    ] {
        let leaf = token.copy().set_requires_grad(true);
        let scores = SequenceScores::from_token_logps(&leaf, &mask);
        let terms = preference_loss(&scores, &reference, &DpoConfig { loss, beta: BETA });
        terms.total.backward();
        assert_close(
            &terms.total.reshape([1]),
            &theirs[&format!("{name}.loss")],
            name,
        );
        assert_close(
            &leaf.grad(),
            &theirs[&format!("{name}.grad")],
            &format!("{name} grad"),
        );
        let m = &terms.metrics;
        let margin = m.get(0) - m.get(1);
        let ours = Tensor::stack(
            &[m.get(0), m.get(1), m.get(2), margin, m.get(3), m.get(4)],
            0,
        );
        assert_close(
            &ours,
            &theirs[&format!("{name}.rewards")],
            &format!("{name} rewards"),
        );
        // The check can fail: the gradient is not zero everywhere.
        assert!(
            leaf.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name}"
        );
    }
}
