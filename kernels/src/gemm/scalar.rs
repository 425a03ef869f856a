//! Portable reference GEMM: one f32 multiply and add per product in
//! increasing k, then the shared epilogue.

use super::{BSource, Element, Epilogue, MatMut, MatRef, epilogue};

pub(super) fn gemm<T: Element, O: Element>(
    alpha: f32,
    a: MatRef<T>,
    b: BSource<T>,
    beta: f32,
    c: MatMut<O>,
    ep: &Epilogue,
) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            if alpha != 0.0 {
                for p in 0..k {
                    acc += a.at(i, p).to_f32() * b.at(p, j).to_f32();
                }
            }
            let out = &mut c.data[i * c.rs + j];
            let old = *out;
            let v = epilogue::finish(
                acc,
                alpha,
                beta,
                || old.to_f32(),
                ep.bias.map(|bias| bias[j]),
                ep.row_bias.map(|bias| bias[i]),
                ep.activation,
            );
            *out = O::from_f32(v);
        }
    }
}
