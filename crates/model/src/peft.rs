//! Parameter-efficient fine-tuning: the recipe's `peft:` section and attaching LoRA/DoRA
//! adapters ([`Adapter`]) to the modules it names, as CoreNet's OpenELM PEFT configs and HF PEFT
//! do. Once attached, the base weights and norms are frozen (no gradient) in the model's dtype;
//! the adapters are the model's trainable parameters.
//!
//! Adapter tensors carry HF PEFT's names without its `base_model.model.` prefix:
//! `transformer.layers.0.attn.qkv_proj.lora_A.weight`, `….lora_B.weight`,
//! `….lora_magnitude_vector` (DoRA), and on the embedding `transformer.token_embeddings.
//! lora_embedding_A` / `lora_embedding_B`.

use regex::Regex;
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::adapter::{Adapter, AdapterKind, DropoutKey};
use crate::error::{Error, Result};
use crate::openelm::OpenElm;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterMethod {
    #[default]
    Lora,
    Dora,
}

/// The `peft:` recipe section. Defaults are CoreNet's OpenELM PEFT configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeftConfig {
    pub method: AdapterMethod,
    /// r: the adapters' inner width.
    pub rank: usize,
    pub alpha: f64,
    /// On the inputs of the linear adapters during training (the embedding's has none, as in
    /// PEFT).
    pub dropout: f64,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
    /// Regular expressions searched in module names (`transformer.layers.3.attn.qkv_proj`,
    /// `transformer.token_embeddings`, ...); every one must match at least one module.
    pub targets: Vec<String>,
}

impl Default for PeftConfig {
    fn default() -> Self {
        PeftConfig {
            method: AdapterMethod::Lora,
            rank: 32,
            alpha: 32.0,
            dropout: 0.1,
            rslora: false,
            targets: [
                "token_embeddings",
                "qkv_proj",
                "out_proj",
                "proj_1",
                "proj_2",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl PeftConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config("peft.rank", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config(
                "peft.alpha",
                format!("{} must be positive", self.alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(
                "peft.dropout",
                format!("{} is not in [0, 1)", self.dropout),
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::config("peft.targets", "names no module"));
        }
        self.patterns().map(|_| ())
    }

    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.rank as f64;
        match self.rslora {
            true => self.alpha / r.sqrt(),
            false => self.alpha / r,
        }
    }

    /// Adapter parameters these settings put on a model of `config` (computed from the shapes
    /// alone): r·(in + out) per adapted module, plus out for DoRA's magnitude.
    pub fn adapter_params(&self, config: &crate::OpenElmConfig) -> Result<u64> {
        let patterns = self.patterns()?;
        let r = self.rank as u64;
        let mut total = 0;
        for (name, shape) in crate::weights::tensor_shapes(config)? {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let adaptable = module == "transformer.token_embeddings"
                || ["qkv_proj", "out_proj", "proj_1", "proj_2"]
                    .iter()
                    .any(|m| module.ends_with(m));
            if !adaptable || !patterns.iter().any(|p| p.is_match(module)) {
                continue;
            }
            let (rows, cols) = (shape[0] as u64, shape[1] as u64);
            // The embedding's magnitude has one entry per embedding dimension (cols).
            let features = match module == "transformer.token_embeddings" {
                true => cols,
                false => rows,
            };
            total += r * (rows + cols);
            if self.method == AdapterMethod::Dora {
                total += features;
            }
        }
        Ok(total)
    }

    fn patterns(&self) -> Result<Vec<Regex>> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Regex::new(t)
                    .map_err(|e| Error::config(format!("peft.targets[{i}]"), format!("`{t}`: {e}")))
            })
            .collect()
    }
}

/// A module that can carry an adapter.
struct Slot<'a> {
    name: String,
    kind: AdapterKind,
    weight: &'a Tensor,
    adapter: &'a mut Option<Adapter>,
}

impl OpenElm {
    fn slots(&mut self) -> Vec<Slot<'_>> {
        let mut slots = vec![Slot {
            name: "transformer.token_embeddings".into(),
            kind: AdapterKind::Embedding,
            weight: &self.token_embeddings,
            adapter: &mut self.embedding_adapter,
        }];
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("transformer.layers.{i}");
            let (attn, ffn) = (&mut layer.attn, &mut layer.ffn);
            let linear = [
                ("attn.qkv_proj", &attn.qkv_proj, &mut attn.qkv_adapter),
                ("attn.out_proj", &attn.out_proj, &mut attn.out_adapter),
                ("ffn.proj_1", &ffn.proj_1, &mut ffn.proj_1_adapter),
                ("ffn.proj_2", &ffn.proj_2, &mut ffn.proj_2_adapter),
            ];
            for (module, weight, adapter) in linear {
                slots.push(Slot {
                    name: format!("{p}.{module}"),
                    kind: AdapterKind::Linear,
                    weight,
                    adapter,
                });
            }
        }
        slots
    }

    /// Attaches `peft`'s adapters under `root` (the model's VarStore root) and freezes the base.
    /// Names the pattern that matches nothing, or the module a rank does not fit.
    pub fn attach_adapters(&mut self, root: &nn::Path, peft: &PeftConfig) -> Result<()> {
        peft.validate()?;
        if self.has_adapters() {
            return Err(Error::config("peft", "the model already has adapters"));
        }
        let patterns = peft.patterns()?;
        let key = self.dropout_key.clone();
        let mut slots = self.slots();
        for (i, pattern) in patterns.iter().enumerate() {
            if !slots.iter().any(|s| pattern.is_match(&s.name)) {
                return Err(Error::config(
                    format!("peft.targets[{i}]"),
                    format!(
                        "`{}` matches no module (modules are named like transformer.token_embeddings, transformer.layers.0.attn.qkv_proj, transformer.layers.0.ffn.proj_1)",
                        peft.targets[i]
                    ),
                ));
            }
        }
        let mut index = 0;
        for slot in slots.iter_mut() {
            if !patterns.iter().any(|p| p.is_match(&slot.name)) {
                continue;
            }
            let adapter = new_adapter(root, slot, peft, index, key.clone())?;
            *slot.adapter = Some(adapter);
            index += 1;
        }
        drop(slots);
        for (_, p) in self.named_parameters() {
            let _ = p.set_requires_grad(false);
        }
        Ok(())
    }

    pub fn has_adapters(&self) -> bool {
        self.embedding_adapter.is_some()
            || self.layers.iter().any(|l| {
                l.attn.qkv_adapter.is_some()
                    || l.attn.out_adapter.is_some()
                    || l.ffn.proj_1_adapter.is_some()
                    || l.ffn.proj_2_adapter.is_some()
            })
    }

    /// Every adapter tensor by name (see the module docs), in module order.
    pub fn adapter_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |module: &str, adapter: &Option<Adapter>| {
            let Some(a) = adapter else { return };
            let (a_name, b_name) = match a.kind {
                AdapterKind::Linear => ("lora_A.weight", "lora_B.weight"),
                AdapterKind::Embedding => ("lora_embedding_A", "lora_embedding_B"),
            };
            out.push((format!("{module}.{a_name}"), a.a.shallow_clone()));
            out.push((format!("{module}.{b_name}"), a.b.shallow_clone()));
            if let Some(m) = &a.magnitude {
                out.push((format!("{module}.lora_magnitude_vector"), m.shallow_clone()));
            }
        };
        push("transformer.token_embeddings", &self.embedding_adapter);
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("transformer.layers.{i}");
            push(&format!("{p}.attn.qkv_proj"), &layer.attn.qkv_adapter);
            push(&format!("{p}.attn.out_proj"), &layer.attn.out_adapter);
            push(&format!("{p}.ffn.proj_1"), &layer.ffn.proj_1_adapter);
            push(&format!("{p}.ffn.proj_2"), &layer.ffn.proj_2_adapter);
        }
        out
    }

    /// What training updates and a checkpoint holds: the adapters when there are any, else
    /// every parameter.
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        match self.has_adapters() {
            true => self.adapter_parameters(),
            false => self.named_parameters(),
        }
    }

    /// Names of the modules carrying an adapter (PEFT's `target_modules`, exactly).
    pub fn adapted_modules(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .adapter_parameters()
            .into_iter()
            .filter_map(|(n, _)| {
                n.strip_suffix(".lora_A.weight")
                    .or_else(|| n.strip_suffix(".lora_embedding_A"))
                    .map(String::from)
            })
            .collect();
        names.dedup();
        names
    }

    /// The key that switches the adapters' dropout: [`DropoutKey::OFF`] or a micro-batch's key.
    pub fn dropout_key(&self) -> &DropoutKey {
        &self.dropout_key
    }

    /// Folds every adapter into its weight and removes it: the plain model whose forward equals
    /// the adapted one. A tied model whose embedding is adapted gets its own head (the base
    /// embedding: PEFT adapts the lookup only), so its config no longer shares them.
    pub fn merge_adapters(&mut self) -> Result<()> {
        let tied_base = match (&self.embedding_adapter, self.lm_head.is_none()) {
            (Some(_), true) => Some(tch::no_grad(|| self.token_embeddings.copy())),
            _ => None,
        };
        for slot in self.slots() {
            let Some(adapter) = slot.adapter.take() else {
                continue;
            };
            let merged = adapter.merged(slot.weight);
            tch::no_grad(|| slot.weight.shallow_clone().f_copy_(&merged))?;
        }
        if let Some(head) = tied_base {
            self.lm_head = Some(head);
            self.config.share_input_output_layers = false;
        }
        Ok(())
    }
}

fn new_adapter(
    root: &nn::Path,
    slot: &Slot<'_>,
    peft: &PeftConfig,
    index: u64,
    key: DropoutKey,
) -> Result<Adapter> {
    let size = slot.weight.size(); // linear (out, in); embedding (V, C)
    let (rows, cols) = (size[0], size[1]);
    let r = peft.rank as i64;
    if r > rows.min(cols) {
        return Err(Error::config(
            "peft.rank",
            format!(
                "{r} is larger than `{}` allows: its weight is {rows} x {cols}",
                slot.name
            ),
        ));
    }
    let path = slot.name.split('.').fold(root.clone(), |p, part| &p / part);
    let (a, b, dropout) = match slot.kind {
        AdapterKind::Linear => {
            // PEFT: kaiming_uniform(a = sqrt(5)) on A, i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0.
            let bound = (cols as f64).powf(-0.5);
            let a = (&path / "lora_A").uniform("weight", &[r, cols], -bound, bound);
            let b = (&path / "lora_B").zeros("weight", &[rows, r]);
            (a, b, peft.dropout)
        }
        AdapterKind::Embedding => {
            // PEFT's embedding: A = 0 (r, V), B ~ N(0, 1) (C, r); no dropout.
            let a = path.zeros("lora_embedding_A", &[r, rows]);
            let b = path.randn("lora_embedding_B", &[cols, r], 0.0, 1.0);
            (a, b, 0.0)
        }
    };
    let magnitude = match peft.method {
        AdapterMethod::Lora => None,
        AdapterMethod::Dora => {
            // The base weight's norm per output feature (B A = 0 at the start).
            let dim = match slot.kind {
                AdapterKind::Linear => 1i64,
                AdapterKind::Embedding => 0,
            };
            let norms = tch::no_grad(|| {
                slot.weight
                    .to_kind(Kind::Float)
                    .norm_scalaropt_dim(2.0, [dim].as_slice(), false)
            });
            let m = path.zeros("lora_magnitude_vector", &[norms.size()[0]]);
            tch::no_grad(|| m.shallow_clone().f_copy_(&norms.to_kind(m.kind())))?;
            Some(m)
        }
    };
    Ok(Adapter {
        kind: slot.kind,
        a,
        b,
        magnitude,
        scale: peft.scale(),
        dropout,
        index,
        key,
    })
}
