//! Attention that stays inside each document of a packed row. A row of packed documents
//! (each starting with BOS) is split into segments at every BOS; a token attends to the earlier
//! tokens of its own segment only. RoPE encodes relative positions, so attention inside a
//! segment is exactly what the document alone gets, wherever it sits in the row: its logits
//! equal those of the document run by itself. The leading tokens of a row (the rest of a document
//! begun in the row before) form one segment of their own.

use tch::{Kind, Tensor};

/// tokens: (B, T) int64 -> (B, 1, T, T) bool, true where query i may attend to key j: j ≤ i and
/// both in the same segment.
pub fn document_mask(tokens: &Tensor, bos: i64) -> Tensor {
    let t = tokens.size()[1];
    let segment = tokens.eq(bos).to_kind(Kind::Int64).cumsum(1, Kind::Int64); // (B, T)
    let same = segment.unsqueeze(2).eq_tensor(&segment.unsqueeze(1)); // (B, T, T)
    let causal = Tensor::ones([t, t], (Kind::Bool, tokens.device())).tril(0); // (T, T)
    same.logical_and(&causal).unsqueeze(1) // (B, 1, T, T)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_start_at_bos_and_stay_causal() {
        // [x y | BOS a | BOS b c]: three segments.
        let tokens = Tensor::from_slice(&[7i64, 8, 1, 5, 1, 6, 9]).view([1, 7]);
        let m = document_mask(&tokens, 1);
        assert_eq!(m.size(), [1, 1, 7, 7]);
        let may = |i: i64, j: i64| m.int64_value(&[0, 0, i, j]) == 1;
        assert!(may(1, 0) && !may(0, 1), "causal inside the leading segment");
        assert!(!may(2, 1) && may(3, 2), "BOS opens a segment");
        assert!(may(6, 4) && may(6, 5) && !may(6, 3) && !may(6, 0));
    }
}
