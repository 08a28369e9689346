//! Exact parameter counts and per-layer shapes of the four OpenELM sizes, from the config alone.

use corenet_model::{OpenElmConfig, PRESETS};

fn config(name: &str, vocab: usize) -> OpenElmConfig {
    let mut c = OpenElmConfig::preset(name).expect("known preset");
    c.vocab_size = vocab;
    c
}

fn expand(runs: &[(usize, usize)]) -> Vec<usize> {
    runs.iter()
        .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
        .collect()
}

#[test]
fn exact_parameter_counts_with_hf_vocab() {
    let expected = [
        ("OpenELM-270M", 271_527_168u64),
        ("OpenELM-450M", 457_179_136),
        ("OpenELM-1_1B", 1_079_891_456),
        ("OpenELM-3B", 3_036_647_424),
    ];
    for (name, total) in expected {
        let count = config(name, 32000).param_count().expect("valid");
        assert_eq!(count.total(), total, "{name}");
    }
}

#[test]
fn exact_parameter_counts_with_corenet_training_vocab() {
    let expected = [
        ("OpenELM-270M", 271_691_008u64),
        ("OpenELM-450M", 457_375_744),
        ("OpenELM-1_1B", 1_080_153_600),
        ("OpenELM-3B", 3_037_040_640),
    ];
    for (name, total) in expected {
        let count = config(name, 32128).param_count().expect("valid");
        assert_eq!(count.total(), total, "{name}");
    }
}

#[test]
fn component_split_matches_spec_for_270m() {
    let count = config("OpenELM-270M", 32128).param_count().expect("valid");
    assert_eq!(count.embedding, 41_123_840);
    assert_eq!(count.layers_total(), 230_565_888);
    assert_eq!(count.final_norm, 1280);
    let attention: u64 = count.layers.iter().map(|l| l.attention).sum();
    let ffn: u64 = count.layers.iter().map(|l| l.ffn).sum();
    assert_eq!(attention, 51_611_648);
    assert_eq!(ffn, 178_913_280);
    let per_layer: Vec<u64> = count.layers.iter().map(|l| l.total()).collect();
    assert_eq!(per_layer[0], 5_409_408);
    assert_eq!(per_layer[5], 11_143_808);
    assert_eq!(per_layer[15], 23_759_488);
}

fn check_layers(name: &str, q: &[usize], kv: &[usize], ffn: &[usize]) {
    let dims = config(name, 32000).layers().expect("valid");
    let got_q: Vec<usize> = dims.iter().map(|l| l.query_heads).collect();
    let got_kv: Vec<usize> = dims.iter().map(|l| l.kv_heads).collect();
    let got_f: Vec<usize> = dims.iter().map(|l| l.ffn_dim).collect();
    assert_eq!(got_q, q, "{name} query heads");
    assert_eq!(got_kv, kv, "{name} kv heads");
    assert_eq!(got_f, ffn, "{name} ffn widths");
}

#[test]
fn per_layer_shapes_270m() {
    check_layers(
        "OpenELM-270M",
        &[
            12, 12, 12, 12, 12, 16, 16, 16, 16, 16, 16, 16, 20, 20, 20, 20,
        ],
        &[3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5],
        &[
            768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608,
            4864, 5120,
        ],
    );
}

#[test]
fn per_layer_shapes_450m() {
    check_layers(
        "OpenELM-450M",
        &[
            12, 12, 12, 16, 16, 16, 16, 16, 16, 16, 20, 20, 20, 20, 20, 20, 24, 24, 24, 24,
        ],
        &[3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6],
        &[
            768, 1024, 1280, 1536, 1792, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4352,
            4608, 5120, 5376, 5632, 5888, 6144,
        ],
    );
}

#[test]
fn per_layer_shapes_1_1b() {
    check_layers(
        "OpenELM-1_1B",
        &[
            16, 16, 16, 20, 20, 20, 20, 20, 20, 20, 24, 24, 24, 24, 24, 24, 24, 24, 28, 28, 28, 28,
            28, 28, 32, 32, 32, 32,
        ],
        &[
            4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 8, 8, 8, 8,
        ],
        &[
            1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4608,
            4608, 5120, 5376, 5632, 5888, 6144, 6400, 6656, 6912, 7168, 7424, 7680, 7936, 8192,
        ],
    );
}

#[test]
fn per_layer_shapes_3b() {
    check_layers(
        "OpenELM-3B",
        &expand(&[(12, 4), (16, 14), (20, 12), (24, 6)]),
        &expand(&[(3, 4), (4, 14), (5, 12), (6, 6)]),
        &[
            1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 4096, 4352, 4608, 4864, 5120, 5632,
            5888, 6144, 6400, 6656, 7168, 7424, 7680, 7936, 8192, 8704, 8960, 9216, 9472, 9728,
            10240, 10496, 10752, 11008, 11264, 11776, 12032, 12288,
        ],
    );
}

#[test]
fn corenet_test_vectors() {
    let gpt_test = OpenElmConfig::preset("gpt-test")
        .expect("preset")
        .layers()
        .expect("valid");
    assert_eq!(gpt_test.len(), 1);
    assert_eq!(
        (
            gpt_test[0].query_heads,
            gpt_test[0].kv_heads,
            gpt_test[0].ffn_dim
        ),
        (1, 1, 256)
    );
    let uniform = OpenElmConfig::preset("gpt-1_3B")
        .expect("preset")
        .layers()
        .expect("valid");
    assert_eq!(uniform.len(), 24);
    assert!(uniform
        .iter()
        .all(|l| (l.query_heads, l.kv_heads, l.ffn_dim) == (32, 8, 6144)));
}

#[test]
fn every_preset_validates() {
    for name in PRESETS {
        OpenElmConfig::preset(name)
            .expect("preset")
            .validate()
            .expect(name);
    }
}

#[test]
fn training_flops_per_token_is_close_to_6n_plus_attention() {
    let c = config("OpenELM-270M", 32128);
    let flops = c.training_flops_per_token(2048).expect("valid");
    // 6 * (230.5M matmul + 41.1M head) + 12 * 2048 * sum(q widths = 252 heads * 64)
    let expected = 6.0 * (230_565_888.0 - 16.0 * (2.0 * 1280.0 + 128.0) + 41_123_840.0)
        + 12.0 * 2048.0 * (252.0 * 64.0);
    assert!((flops - expected).abs() < 1.0, "{flops} vs {expected}");
}
