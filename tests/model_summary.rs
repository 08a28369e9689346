//! `corenet model summary` end to end: exact counts in JSON and in the table, clear errors.

use corenet_e2e::corenet;

#[test]
fn summary_json_has_exact_counts_for_every_size() {
    let expected = [
        ("OpenELM-270M", 271_691_008u64),
        ("OpenELM-450M", 457_375_744),
        ("OpenELM-1_1B", 1_080_153_600),
        ("OpenELM-3B", 3_037_040_640),
    ];
    for (name, total) in expected {
        let out = corenet(&[
            "model",
            "summary",
            "--model",
            name,
            "--vocab-size",
            "32128",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(json["total_params"].as_u64(), Some(total), "{name}");
        assert!(json["training_flops_per_token"]
            .as_f64()
            .is_some_and(|f| f > 6.0 * total as f64 * 0.8));
    }
}

#[test]
fn summary_table_lists_layers_and_total() {
    let out = corenet(&["model", "summary", "--model", "OpenELM-270M"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("271,527,168"), "{text}");
    // Layer 15: 20 query heads, 5 KV heads, FFN 5120, 23,759,488 parameters.
    let last = text
        .lines()
        .find(|l| l.trim_start().starts_with("15 "))
        .expect("layer 15 row");
    let cols: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(cols, ["15", "20", "5", "5120", "23,759,488"]);
}

#[test]
fn summary_reads_a_yaml_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.yaml");
    std::fs::write(
        &path,
        "num_transformer_layers: 2\nmodel_dim: 64\nhead_dim: 16\nqkv_multipliers: [0.5, 1.0]\n\
         num_gqa_groups: 2\nffn_multipliers: [0.5, 2.0]\nffn_dim_divisor: 16\nvocab_size: 100\n",
    )
    .expect("write");
    let out = corenet(&[
        "model",
        "summary",
        "--config",
        &path.to_string_lossy(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["layers"][0]["query_heads"].as_u64(), Some(2));
    assert_eq!(json["layers"][1]["query_heads"].as_u64(), Some(4));
}

#[test]
fn bad_input_fails_with_a_message_naming_it() {
    let out = corenet(&["model", "summary", "--model", "OpenELM-7B"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OpenELM-7B"));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "num_transformer_layers: 2\nmodel_dimm: 64\n").expect("write");
    let out = corenet(&["model", "summary", "--config", &path.to_string_lossy()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model_dimm") && err.contains("bad.yaml"),
        "{err}"
    );
}
