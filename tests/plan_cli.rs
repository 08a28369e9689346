//! `corenet plan` on the four OpenELM recipes: exact parameter counts (vocab 32128, from
//! openelm-reference.md / corenet-spec §1.7), a memory estimate with a verdict, and the same
//! numbers from CoreNet's own YAML.

use corenet_e2e::{corenet, workspace_root};

const EXPECTED: [(&str, u64); 4] = [
    ("270M", 271_691_008),
    ("450M", 457_375_744),
    ("1_1B", 1_080_153_600),
    ("3B", 3_037_040_640),
];

fn plan_json(args: &[&str]) -> serde_json::Value {
    let out = corenet(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn plan_prints_exact_parameters_and_memory_for_every_recipe() {
    for (size, params) in EXPECTED {
        let recipe = workspace_root().join(format!("recipes/openelm-{size}.yaml"));
        let recipe = recipe.to_string_lossy();
        let json = plan_json(&["plan", &recipe, "--gpus", "128", "--json"]);
        assert_eq!(json["params"].as_u64(), Some(params), "{size}");
        assert_eq!(json["tokens_per_step"].as_u64(), Some(4_194_304), "{size}");
        assert_eq!(
            json["total_tokens"].as_u64(),
            Some(4_194_304 * 350_000),
            "{size}"
        );
        assert_eq!(json["accumulation"].as_u64(), Some(1), "{size}");
        let memory = &json["memory"];
        let total = memory["total"].as_u64().expect("total");
        let parts: u64 = [
            "weights",
            "gradients",
            "master_weights",
            "optimizer_moments",
            "activations",
        ]
        .iter()
        .map(|k| memory[k].as_u64().expect(k))
        .sum();
        assert_eq!(total, parts, "{size}");
        assert_eq!(
            memory["weights"].as_u64(),
            Some(2 * params),
            "{size}: bf16 weights"
        );
        assert_eq!(memory["fits"].as_bool(), Some(true), "{size}: {memory}");
        assert!(
            json["gpu_hours"].as_f64().is_some_and(|h| h > 100.0),
            "{size}"
        );

        let out = corenet(&["plan", &recipe, "--gpus", "8"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let thousands = params
            .to_string()
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).expect("digits"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(text.contains(&thousands), "{size}: {text}");
        assert!(text.contains("16 accumulation step(s) per GPU"), "{text}");
        assert!(
            text.contains("fits") && text.contains("GPU-hours"),
            "{text}"
        );
    }
}

#[test]
fn sharding_and_checkpointing_show_in_the_3b_plan() {
    let recipe = workspace_root().join("recipes/openelm-3B.yaml");
    let recipe = recipe.to_string_lossy();
    let json = plan_json(&["plan", &recipe, "--gpus", "128", "--json"]);
    let m = &json["memory"];
    // ZeRO-1 over 128 ranks: 8 bytes of moments per parameter, divided.
    assert_eq!(m["optimizer_shards"].as_u64(), Some(128));
    assert_eq!(
        m["optimizer_moments"].as_u64(),
        Some((8 * 3_037_040_640u64).div_ceil(128))
    );
    assert_eq!(m["activation_checkpointing"].as_bool(), Some(true));
    assert!(m["activations_checkpointed"].as_u64() < m["activations_full"].as_u64());
    // Without checkpointing, 16 sequences of 2048 tokens of the 3B model do not fit in 80 GB.
    let off = plan_json(&[
        "plan",
        &recipe,
        "--gpus",
        "128",
        "--json",
        "--set",
        "trainer.activation_checkpointing=false",
    ]);
    assert_eq!(
        off["memory"]["fits"].as_bool(),
        Some(false),
        "{}",
        off["memory"]
    );
    // A100 is slower: more GPU-hours for the same FLOPs.
    let a100 = plan_json(&["plan", &recipe, "--gpus", "128", "--gpu", "a100", "--json"]);
    assert!(a100["gpu_hours"].as_f64() > json["gpu_hours"].as_f64());
}

#[test]
fn plan_reads_corenet_yaml() {
    let config = workspace_root().join("configs/corenet/openelm_270M.yaml");
    let json = plan_json(&[
        "plan",
        "--corenet-config",
        &config.to_string_lossy(),
        "--json",
    ]);
    assert_eq!(json["params"].as_u64(), Some(271_691_008));
    assert_eq!(json["global_batch"].as_u64(), Some(2048));
    let out = corenet(&[
        "plan",
        "--corenet-config",
        &config.to_string_lossy(),
        "--set",
        "trainer.micro_batch=24",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trainer.global_batch"));
}
