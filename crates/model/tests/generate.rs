//! Generation: the KV cache changes nothing for greedy decoding; sampling is seeded.

use corenet_model::generate::{generate, SamplingConfig};
use corenet_model::{OpenElm, OpenElmConfig};
use tch::{nn, Device};

fn model() -> (nn::VarStore, OpenElm) {
    let config = OpenElmConfig::miniature(101, 3, 48, 8);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = OpenElm::new(&vs.root(), &config).expect("valid");
    (vs, m)
}

#[test]
fn greedy_with_kv_cache_equals_greedy_without() {
    let (_vs, m) = model();
    let config = SamplingConfig {
        max_new_tokens: 40,
        ..SamplingConfig::default()
    };
    let prompt = [1i64, 17, 42, 5, 99];
    let cached = generate(&m, &prompt, &config, true).expect("cached");
    let uncached = generate(&m, &prompt, &config, false).expect("uncached");
    assert_eq!(cached.len(), 40);
    assert_eq!(cached, uncached);
}

#[test]
fn sampling_is_reproducible_from_its_seed_and_stops_at_eos() {
    let (_vs, m) = model();
    let config = SamplingConfig {
        max_new_tokens: 30,
        temperature: 1.0,
        top_p: 0.9,
        seed: 7,
        eos_id: None,
    };
    let a = generate(&m, &[1, 2, 3], &config, true).expect("a");
    let b = generate(&m, &[1, 2, 3], &config, true).expect("b");
    assert_eq!(a, b);
    let other = generate(
        &m,
        &[1, 2, 3],
        &SamplingConfig {
            seed: 8,
            ..config.clone()
        },
        true,
    )
    .expect("c");
    assert_ne!(
        a, other,
        "a different seed should give a different continuation"
    );
    let stop = SamplingConfig {
        eos_id: Some(a[4]),
        ..config.clone()
    };
    let cut = generate(&m, &[1, 2, 3], &stop, true).expect("eos");
    assert!(cut.len() <= 5 && cut.last() == Some(&a[4]));
    assert!(generate(&m, &[], &config, true).is_err());
    assert!(generate(
        &m,
        &[1],
        &SamplingConfig {
            top_p: 0.0,
            ..config
        },
        true
    )
    .is_err());
}
