use mixprec_kernels::elementwise::*;
use mixprec_kernels::{FloatSlice, FloatSliceMut, Isa};

#[test]
fn smoke() {
    let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 6.0).collect();
    for op in UnaryOp::ALL {
        let mut r = vec![0.0f32; x.len()];
        unary_at(
            Isa::Scalar,
            op,
            FloatSlice::F32(&x),
            FloatSliceMut::F32(&mut r),
        )
        .unwrap();
        for isa in Isa::available() {
            let mut y = vec![0.0f32; x.len()];
            unary_at(isa, op, FloatSlice::F32(&x), FloatSliceMut::F32(&mut y)).unwrap();
            for i in 0..x.len() {
                assert_eq!(y[i].to_bits(), r[i].to_bits(), "{op:?} {isa} x={}", x[i]);
            }
        }
        println!("{op:?}: {:?}", &r[..5]);
    }
    println!(
        "exp(1)={} erf(0.5)={} tanh(0.3)={} log(2)={}",
        UnaryOp::Exp.apply(1.0),
        UnaryOp::Erf.apply(0.5),
        UnaryOp::Tanh.apply(0.3),
        UnaryOp::Log.apply(2.0)
    );
}
