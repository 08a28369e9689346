//! The planner's arithmetic on a case small enough to compute by hand, and its batch and
//! time arithmetic.

use corenet_train::recipe::plan::{memory_plan, plan, Gpu, PlanTarget};
use corenet_train::Recipe;
use serde_json::json;

/// 2 uniform layers: d 128, head_dim 64, 2 query heads and 2 KV heads (q = kv = 128),
/// FFN 128, vocab 256, tied, q/k norms; bf16, micro-batch 2 × seq_len 8 = 16 tokens.
fn small(checkpointing: bool, sharded: bool) -> Recipe {
    Recipe::from_value(json!({
        "run": {"name": "small", "dir": "runs/small"},
        "model": {
            "vocab_size": 256, "num_transformer_layers": 2, "model_dim": 128, "head_dim": 64,
            "qkv_multipliers": 1.0, "num_gqa_groups": 1, "ffn_multipliers": 1.0,
            "ffn_dim_divisor": 64, "normalize_qk_projections": true,
            "share_input_output_layers": true
        },
        "data": {"tokenizer": "t.json", "seq_len": 8,
                 "sources": [{"name": "a", "paths": ["a.jsonl"]}]},
        "schedule": {"name": "cosine", "max_lr": 1e-3},
        "trainer": {"global_batch": 8, "micro_batch": 2, "steps": 10, "precision": "bf16",
                    "activation_checkpointing": checkpointing, "sharded_optimizer": sharded}
    }))
    .expect("recipe")
}

#[test]
fn memory_of_a_hand_computed_case() {
    // Parameters: embedding 256·128 = 32,768; per layer attention 128·(2+4)·64 + 2·64·128
    // + 2·64 = 65,664, FFN 128·256 + 128·128 = 49,152, norms 256 → 115,072; final norm 128.
    // Total 32,768 + 2·115,072 + 128 = 263,040.
    let recipe = small(true, true);
    assert_eq!(recipe.model.param_count().expect("count").total(), 263_040);
    let m = memory_plan(&recipe, 2, 80_000_000_000).expect("plan");
    assert_eq!(m.weights, 263_040 * 2);
    assert_eq!(m.gradients, 263_040 * 2);
    // ZeRO-1 over 2 ranks: f32 masters 4P/2, moments 8P/2.
    assert_eq!(m.optimizer_shards, 2);
    assert_eq!(m.master_weights, 526_080);
    assert_eq!(m.optimizer_moments, 1_052_160);
    // Per layer and token: 2·(4·128 + 4·128 + 5·128 + 4·128) + 4·(2·128 + 128 + 128) = 6,400.
    // Head per token: 2·2·128 + 4·128 + 256·(2 + 8) = 3,584.
    // Full: 16 · (2·6,400 + 3,584) = 262,144. Checkpointed: 16 · (2·2·128 + 6,400 + 3,584)
    // = 167,936.
    assert_eq!(m.activations_full, 262_144);
    assert_eq!(m.activations_checkpointed, 167_936);
    assert_eq!(m.activations, 167_936);
    assert_eq!(m.total, 3 * 526_080 + 1_052_160 + 167_936);
    assert_eq!(m.usable, 72_000_000_000);
    assert!(m.fits);

    // Without sharding the optimizer state is whole; without checkpointing the full graph counts.
    let m = memory_plan(&small(false, false), 2, 80_000_000_000).expect("plan");
    assert_eq!((m.optimizer_shards, m.master_weights), (1, 1_052_160));
    assert_eq!(m.optimizer_moments, 2_104_320);
    assert_eq!(m.activations, 262_144);
    // A GPU too small for it does not fit.
    let m = memory_plan(&small(false, false), 2, 4_000_000).expect("plan");
    assert!(!m.fits);
}

#[test]
fn a_dpo_run_holds_its_reference_weights_once_more() {
    let plain = small(true, true);
    let mut tree = serde_json::to_value(&plain).expect("tree");
    tree["dpo"] = json!({"loss": "hinge", "beta": 0.01});
    tree["data"]["mode"] = json!("pairs");
    tree["data"]["sources"][0]["template"] = json!("preference");
    let dpo = Recipe::from_value(tree).expect("dpo recipe");
    let (m, p) = (
        memory_plan(&dpo, 2, 80_000_000_000).expect("plan"),
        memory_plan(&plain, 2, 80_000_000_000).expect("plan"),
    );
    // bf16: the base once more, with no gradients or optimizer state of its own.
    assert_eq!(m.reference_weights, 263_040 * 2);
    assert_eq!(p.reference_weights, 0);
    assert_eq!(m.total, p.total + m.reference_weights);
}

#[test]
fn batch_tokens_and_time() {
    let recipe = small(true, true);
    let target = PlanTarget {
        gpus: 2,
        gpu: Gpu::H100,
        mfu: 0.5,
    };
    let p = plan(&recipe, &target).expect("plan");
    assert_eq!(p.accumulation, 2); // 8 / (2 × 2)
    assert_eq!(p.tokens_per_step, 64);
    assert_eq!(p.total_tokens, 640);
    let flops = recipe.model.training_flops_per_token(8).expect("flops");
    assert_eq!(p.flops_per_token, flops);
    let seconds = flops * 640.0 / (2.0 * 989e12 * 0.5);
    assert!((p.wall_seconds - seconds).abs() <= seconds * 1e-12);
    assert!((p.gpu_hours - seconds * 2.0 / 3600.0).abs() <= seconds * 1e-12);

    // 8 sequences do not split over 3 GPUs × 2.
    let err = plan(&recipe, &PlanTarget { gpus: 3, ..target }).expect_err("indivisible");
    assert!(err.to_string().contains("trainer.global_batch"), "{err}");
    assert!(plan(&recipe, &PlanTarget { mfu: 1.5, ..target }).is_err());
    assert!("b200".parse::<Gpu>().is_err());
    assert_eq!("A100".parse::<Gpu>().expect("a100"), Gpu::A100);
}
