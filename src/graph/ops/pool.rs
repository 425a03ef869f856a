//! MaxPool and AveragePool (1-D and 2-D), computed in f32.

use super::PoolAttrs;
use super::infer::geometry;
use crate::graph::error::Result;
use crate::graph::tensor::{Tensor, TensorView, f32_to_float};

/// `MaxPool` / `AveragePool`: widens the input to f32, computes each window,
/// rounds each output once.
pub(crate) fn pool(
    node: &str,
    p: &PoolAttrs,
    max: bool,
    x: &TensorView<'_>,
    out: &mut Tensor,
) -> Result<()> {
    let xs = x.shape();
    let (nc, h, w) = if xs.len() == 3 {
        (xs[0] * xs[1], 1, xs[2])
    } else {
        (xs[0] * xs[1], xs[2], xs[3])
    };
    let spatial: Vec<Option<usize>> = xs[2..].iter().map(|&d| Some(d)).collect();
    let dil: &[usize] = if max { &p.dilations } else { &[] };
    let g = geometry(
        node,
        &spatial,
        &p.kernel_shape,
        &p.strides,
        &p.pads,
        dil,
        p.auto_pad,
        p.ceil_mode,
    )?;
    let two = |v: &[usize], d: usize| {
        if v.len() == 1 {
            (d, v[0])
        } else {
            (v[0], v[1])
        }
    };
    let (kh, kw) = two(&g.kernel, 1);
    let (sh, sw) = two(&g.strides, 1);
    let (dh, dw) = two(&g.dilations, 1);
    let (ph, pw) = two(&g.pad_begin, 0);
    let outs: Vec<usize> = g.out.iter().map(|o| o.expect("concrete")).collect();
    let (oh, ow) = two(&outs, 1);
    // Explicit end pads bound the window for count_include_pad.
    let n_sp = xs.len() - 2;
    let pads_end: Vec<usize> = if p.pads.len() == 2 * n_sp {
        p.pads[n_sp..].to_vec()
    } else {
        vec![0; n_sp]
    };
    let (peh, pew) = two(&pads_end, 0);
    let xv = x.to_f32_vec();
    let mut y = vec![0f32; nc * oh * ow];
    for c in 0..nc {
        let xc = &xv[c * h * w..(c + 1) * h * w];
        for i in 0..oh {
            for j in 0..ow {
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                let mut cnt = 0usize;
                let mut padded_cnt = 0usize;
                for ki in 0..kh {
                    let ih = (i * sh + ki * dh) as isize - ph as isize;
                    for kj in 0..kw {
                        let iw = (j * sw + kj * dw) as isize - pw as isize;
                        let inside_padded = ih < (h + peh) as isize && iw < (w + pew) as isize;
                        if inside_padded {
                            padded_cnt += 1;
                        }
                        if ih < 0 || iw < 0 || ih as usize >= h || iw as usize >= w {
                            continue;
                        }
                        let v = xc[ih as usize * w + iw as usize];
                        if max {
                            if v > acc || v.is_nan() {
                                acc = v;
                            }
                        } else {
                            acc += v;
                        }
                        cnt += 1;
                    }
                }
                y[(c * oh + i) * ow + j] = if max {
                    acc
                } else if p.count_include_pad {
                    acc / padded_cnt as f32
                } else {
                    acc / cnt as f32
                };
            }
        }
    }
    f32_to_float(&y, out.as_float_slice_mut().expect("float"));
    Ok(())
}
