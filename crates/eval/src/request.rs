//! A log-likelihood request: the probability of a continuation given a context, as text and as
//! token ids (tokenized as lm-evaluation-harness's `_encode_pair` does).

use corenet_data::TextTokenizer;

use crate::error::Result;

/// `log P(continuation | context)` is asked for. The continuation usually starts with the
/// task's target delimiter (" ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

/// A request in token ids; `context` is never empty (it starts with BOS when one is added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub context: Vec<i64>,
    pub continuation: Vec<i64>,
}

/// Tokenizes as the harness: trailing whitespace of the context moves to the front of the
/// continuation; the whole string is encoded once and the continuation is what follows the
/// context's own encoding (so a token spanning the boundary belongs to the continuation side
/// only as the whole encoding decides). With `bos`, BOS starts both encodings (the harness's
/// `add_bos_token=True`, which OpenELM's evaluation uses); an empty context becomes `[bos]`.
pub fn encode_pair(
    tokenizer: &dyn TextTokenizer,
    request: &Request,
    bos: Option<u32>,
) -> Result<TokenRequest> {
    let trimmed = request.context.trim_end();
    let context = trimmed;
    let continuation = format!(
        "{}{}",
        &request.context[trimmed.len()..],
        request.continuation
    );
    let encode = |text: &str| -> Result<Vec<i64>> {
        let ids = tokenizer.encode(text)?;
        Ok(bos
            .into_iter()
            .chain(ids)
            .map(i64::from)
            .collect::<Vec<_>>())
    };
    let whole = encode(&format!("{context}{continuation}"))?;
    let mut context_ids = encode(context)?;
    let split = context_ids.len().min(whole.len());
    let continuation_ids = whole[split..].to_vec();
    if context_ids.is_empty() {
        // No BOS and no context: condition on the BOS/EOT id as the harness's prefix token.
        context_ids.push(i64::from(tokenizer.bos_id()));
    }
    Ok(TokenRequest {
        context: context_ids,
        continuation: continuation_ids,
    })
}
