//! Behaviour of the forward pass on tiny, genuinely non-uniform configs: causality, GQA, RoPE,
//! KV cache, and that the model can learn.

use corenet_model::attention::{Attention, AttentionShape};
use corenet_model::rope::Rope;
use corenet_model::KvCache;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

mod common;

use common::{build, tiny};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tiny_config_is_non_uniform() {
    let dims = tiny().layers().expect("valid");
    let q: Vec<usize> = dims.iter().map(|l| l.query_heads).collect();
    let kv: Vec<usize> = dims.iter().map(|l| l.kv_heads).collect();
    let f: Vec<usize> = dims.iter().map(|l| l.ffn_dim).collect();
    assert_eq!(
        (q, kv, f),
        (vec![2, 4, 4], vec![1, 2, 2], vec![32, 80, 128])
    );
}

#[test]
fn changing_token_t_never_changes_earlier_logits() {
    let (_vs, model) = build(&tiny(), 0);
    let tokens = Tensor::randint(97, [2, 24], (Kind::Int64, Device::Cpu));
    let base = model.forward(&tokens).expect("forward");
    for t in [0i64, 7, 23] {
        let changed = tokens.copy();
        let replacement = (tokens.narrow(1, t, 1) + 1).remainder(97);
        changed.narrow(1, t, 1).copy_(&replacement);
        let out = model.forward(&changed).expect("forward");
        if t > 0 {
            let before = max_abs_diff(&base.narrow(1, 0, t), &out.narrow(1, 0, t));
            assert!(before <= 1e-6, "position < {t} changed by {before}");
        }
        let at = max_abs_diff(&base.narrow(1, t, 1), &out.narrow(1, t, 1));
        assert!(
            at > 1e-4,
            "logits at {t} did not react to the change ({at})"
        );
    }
}

/// Plain multi-head attention written out by hand: softmax(QK^T / sqrt(D) + causal) V.
fn manual_attention(
    attn: &Attention,
    rope: &Rope,
    x: &Tensor,
    heads: i64,
    kv: i64,
    d: i64,
) -> Tensor {
    let (b, t) = (x.size()[0], x.size()[1]);
    let qkv = x
        .linear::<Tensor>(&attn.qkv_proj, None)
        .view([b, t, heads + 2 * kv, d])
        .transpose(1, 2);
    let q = qkv.narrow(1, 0, heads);
    let k = qkv.narrow(1, heads, kv);
    let v = qkv.narrow(1, heads + kv, kv);
    let q = rope.apply(&attn.q_norm.as_ref().expect("qk norm").forward(&q), 0);
    let k = rope.apply(&attn.k_norm.as_ref().expect("qk norm").forward(&k), 0);
    let scores = q.matmul(&k.transpose(-2, -1)) / (d as f64).sqrt();
    let mask = Tensor::ones([t, t], (Kind::Bool, Device::Cpu)).triu(1);
    let probs = scores
        .masked_fill(&mask, f64::NEG_INFINITY)
        .softmax(-1, Kind::Float);
    probs
        .matmul(&v)
        .transpose(1, 2)
        .contiguous()
        .view([b, t, heads * d])
        .linear::<Tensor>(&attn.out_proj, None)
}

fn attention(vs: &nn::VarStore, heads: usize, kv: usize) -> Attention {
    let shape = AttentionShape {
        model_dim: 32,
        head_dim: 8,
        query_heads: heads,
        kv_heads: kv,
        qk_norm: true,
    };
    Attention::new(&(vs.root() / "attn"), shape, 0.05)
}

/// Packed documents under the document mask get, token for token, the logits each document
/// gets alone: so packed and unpacked SFT give the same per-conversation loss.
#[test]
fn packed_documents_under_the_document_mask_equal_each_alone() {
    let (_vs, model) = build(&tiny(), 3);
    let bos = 1i64;
    let doc = |len: i64, seed: i64| {
        let body = (Tensor::arange(len - 1, (Kind::Int64, Device::Cpu)) * (seed * 7 + 3) + seed)
            .remainder(90)
            + 5;
        Tensor::cat(&[Tensor::from_slice(&[bos]), body], 0)
    };
    let (a, b, c) = (doc(9, 1), doc(5, 2), doc(10, 3));
    let row = Tensor::cat(&[&a, &b, &c], 0).unsqueeze(0); // (1, 24)
    let mask = corenet_model::document_mask::document_mask(&row, bos);
    let packed = model.forward_masked(&row, Some(&mask)).expect("forward");
    let mut at = 0;
    for d in [&a, &b, &c] {
        let n = d.size()[0];
        let alone = model.forward(&d.unsqueeze(0)).expect("forward");
        let diff = max_abs_diff(&packed.narrow(1, at, n), &alone);
        assert!(diff <= 1e-5, "document at {at}: {diff}");
        at += n;
    }
    // Without the mask the later documents see the earlier ones.
    let plain = model.forward(&row).expect("forward");
    let alone = model.forward(&c.unsqueeze(0)).expect("forward");
    assert!(max_abs_diff(&plain.narrow(1, 14, 10), &alone) > 1e-3);
}

#[test]
fn one_query_head_per_kv_head_is_plain_multi_head_attention() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let attn = attention(&vs, 4, 4);
    let rope = Rope::new(8, 10000.0, 64, Device::Cpu);
    let x = Tensor::randn([2, 10, 32], (Kind::Float, Device::Cpu));
    let ours = attn.forward(&x, &rope, None, None);
    let reference = manual_attention(&attn, &rope, &x, 4, 4, 8);
    assert!(max_abs_diff(&ours, &reference) < 1e-5);
}

#[test]
fn grouped_query_attention_equals_mha_with_kv_heads_repeated_per_group() {
    tch::manual_seed(2);
    let vs_gqa = nn::VarStore::new(Device::Cpu);
    let gqa = attention(&vs_gqa, 4, 2); // query heads 0,1 -> kv 0; 2,3 -> kv 1
    let vs_mha = nn::VarStore::new(Device::Cpu);
    let mha = attention(&vs_mha, 4, 4);
    let d = 8i64;
    tch::no_grad(|| {
        let w = gqa.qkv_proj.view([8, d, 32]); // heads [q0..q3 | k0 k1 | v0 v1]
        let q = w.narrow(0, 0, 4);
        let k = w.narrow(0, 4, 2).repeat_interleave_self_int(2, 0, None);
        let v = w.narrow(0, 6, 2).repeat_interleave_self_int(2, 0, None);
        let mut target = mha.qkv_proj.shallow_clone();
        target.copy_(&Tensor::cat(&[q, k, v], 0).view([12 * d, 32]));
        let mut out = mha.out_proj.shallow_clone();
        out.copy_(&gqa.out_proj);
    });
    let rope = Rope::new(8, 10000.0, 64, Device::Cpu);
    let x = Tensor::randn([2, 12, 32], (Kind::Float, Device::Cpu));
    let diff = max_abs_diff(
        &gqa.forward(&x, &rope, None, None),
        &mha.forward(&x, &rope, None, None),
    );
    assert!(diff < 1e-5, "GQA differs from the equivalent MHA by {diff}");
}

#[test]
fn rope_scores_depend_only_on_relative_position() {
    tch::manual_seed(3);
    let rope = Rope::new(16, 10000.0, 32, Device::Cpu);
    let q = Tensor::randn([1, 2, 20, 16], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, 2, 20, 16], (Kind::Float, Device::Cpu));
    let scores = |qo: usize, ko: usize| {
        rope.apply(&q, qo)
            .matmul(&rope.apply(&k, ko).transpose(-2, -1))
    };
    let at_zero = scores(0, 0);
    // Shifted past the precomputed table too, to exercise the on-the-fly path.
    for shift in [1usize, 5, 40] {
        let diff = max_abs_diff(&at_zero, &scores(shift, shift));
        assert!(diff < 1e-4, "shift {shift}: scores moved by {diff}");
    }
    assert!(
        max_abs_diff(&at_zero, &scores(0, 3)) > 1e-2,
        "a relative shift must change scores"
    );
}

#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    let (_vs, model) = build(&tiny(), 4);
    let tokens = Tensor::randint(97, [2, 16], (Kind::Int64, Device::Cpu));
    let full = model.forward(&tokens).expect("forward");
    let mut cache = KvCache::new(3);
    let prefill = model
        .forward_cached(&tokens.narrow(1, 0, 9), &mut cache)
        .expect("prefill");
    let chunk = model
        .forward_cached(&tokens.narrow(1, 9, 3), &mut cache)
        .expect("chunk");
    let mut steps = vec![prefill, chunk];
    for t in 12..16 {
        steps.push(
            model
                .forward_cached(&tokens.narrow(1, t, 1), &mut cache)
                .expect("step"),
        );
    }
    assert_eq!(cache.len(), 16);
    let incremental = Tensor::cat(&steps, 1);
    let diff = max_abs_diff(&full, &incremental);
    assert!(diff < 1e-4, "cached decoding differs by {diff}");
}

#[test]
fn bf16_forward_and_backward_run_and_stay_close_to_f32() {
    let (mut vs, model) = build(&tiny(), 5);
    let tokens = Tensor::randint(97, [2, 16], (Kind::Int64, Device::Cpu));
    let f32_logits = model.forward(&tokens).expect("forward");
    vs.bfloat16();
    let logits = model.forward(&tokens).expect("forward");
    assert_eq!(logits.kind(), Kind::BFloat16);
    let loss = logits
        .to_kind(Kind::Float)
        .view([-1, 97])
        .cross_entropy_for_logits(&tokens.view([-1]));
    loss.backward();
    assert!(model.token_embeddings.grad().defined());
    // bf16 keeps ~3 significant digits; over 3 layers the logits stay within a few percent.
    let scale = f32_logits.abs().max().double_value(&[]);
    let drift = max_abs_diff(&f32_logits, &logits.to_kind(Kind::Float)) / scale;
    assert!(
        drift < 0.05,
        "bf16 logits drift {drift} relative to their scale {scale}"
    );
}

#[test]
fn tiny_model_overfits_one_batch() {
    let (vs, model) = build(&tiny(), 6);
    let tokens = Tensor::randint(97, [4, 33], (Kind::Int64, Device::Cpu));
    let inputs = tokens.narrow(1, 0, 32);
    let targets = tokens.narrow(1, 1, 32).reshape([-1]);
    let mut opt = nn::AdamW::default().build(&vs, 1e-2).expect("optimizer");
    let mut first = None;
    let mut last = f64::MAX;
    for _ in 0..300 {
        let logits = model.forward(&inputs).expect("forward");
        let loss = logits.view([-1, 97]).cross_entropy_for_logits(&targets);
        opt.backward_step(&loss);
        last = loss.double_value(&[]);
        let start = *first.get_or_insert(last);
        if last < 0.1 * start {
            break;
        }
    }
    let start = first.expect("ran");
    assert!(last < 0.1 * start, "loss {start} -> {last}");
}
