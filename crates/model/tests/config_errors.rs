//! Invalid configs fail at construction with a message naming the field — never a panic.

use corenet_model::{Error, Multiplier, OpenElmConfig};

fn base() -> OpenElmConfig {
    OpenElmConfig::preset("OpenELM-270M").expect("preset")
}

fn field_of(config: &OpenElmConfig) -> String {
    match config.validate() {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn zero_layers_is_rejected() {
    let mut c = base();
    c.num_transformer_layers = 0;
    assert_eq!(field_of(&c), "num_transformer_layers");
}

#[test]
fn multiplier_list_of_wrong_length_is_rejected() {
    let mut c = base();
    c.qkv_multipliers = Multiplier::Range(vec![0.5, 0.75, 1.0]);
    assert_eq!(field_of(&c), "qkv_multipliers");
    let mut c = base();
    c.ffn_multipliers = Multiplier::Range(vec![]);
    assert_eq!(field_of(&c), "ffn_multipliers");
    let mut c = base();
    c.ffn_multipliers = Multiplier::Range(vec![0.5, -1.0]);
    assert_eq!(field_of(&c), "ffn_multipliers");
}

#[test]
fn head_dim_not_dividing_a_width_is_rejected() {
    // make_divisible rounds to multiples of head_dim * groups, so only an odd head_dim or a
    // group count that does not divide the heads can break the shapes.
    let mut c = base();
    c.head_dim = 63;
    assert_eq!(field_of(&c), "head_dim");
}

#[test]
fn unknown_preset_names_the_preset_and_the_known_ones() {
    let err = OpenElmConfig::preset("OpenELM-7B").expect_err("unknown");
    let message = err.to_string();
    assert!(
        message.contains("OpenELM-7B") && message.contains("OpenELM-270M"),
        "{message}"
    );
}

#[test]
fn unsupported_activation_and_padding_index_are_rejected() {
    let mut c = base();
    c.activation_fn_name = "gelu".into();
    assert_eq!(field_of(&c), "activation_fn_name");
    let mut c = base();
    c.padding_index = Some(32000);
    assert_eq!(field_of(&c), "padding_index");
}

#[test]
fn unknown_fields_are_rejected_by_serde() {
    let json = r#"{"model_dim": 64, "num_layers": 2}"#;
    let err = serde_json::from_str::<OpenElmConfig>(json).expect_err("unknown field");
    assert!(err.to_string().contains("num_layers"), "{err}");
}

#[test]
fn construction_validates_before_allocating() {
    let mut c = base();
    c.num_gqa_groups = 0;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let err = corenet_model::OpenElm::new(&vs.root(), &c).expect_err("invalid");
    assert!(err.to_string().contains("num_gqa_groups"), "{err}");
}
