//! Property tests for the conversion kernels: every available level against
//! the scalar reference on arbitrary lengths, unaligned starts and tails,
//! plus guard-page tests proving no path touches memory outside its slices.

use half::{bf16, f16};
use mixprec_kernels::Isa;
use mixprec_kernels::convert::{self, bits};
use proptest::prelude::*;

/// f32 bit patterns biased towards the interesting places: ties, subnormals,
/// the overflow boundary, NaNs, infinities, zeros.
fn interesting_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<u32>().prop_map(f32::from_bits),
        (any::<u16>(), 0u32..4).prop_map(|(hi, lo)| {
            // The low half set to 0x7FFF, 0x8000, 0x8001 or 0 hits bf16 rounding edges.
            f32::from_bits(((hi as u32) << 16) | [0x7FFF, 0x8000, 0x8001, 0][lo as usize])
        }),
        (0u32..0x0080_0000, any::<bool>())
            .prop_map(|(m, s)| f32::from_bits(m | ((s as u32) << 31))),
        (0x4770_0000u32..0x4780_0000).prop_map(f32::from_bits), // around f16::MAX
        (0x3300_0000u32..0x3880_0000).prop_map(f32::from_bits), // f16 subnormal range
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(-0.0f32),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_level_matches_scalar(
        values in prop::collection::vec(interesting_f32(), 0..=1000),
        offset in 0usize..8,
    ) {
        let offset = offset.min(values.len());
        let src = &values[offset..];
        let want_bf16: Vec<u16> = src.iter().map(|x| bits::f32_to_bf16_bits(x.to_bits())).collect();
        let want_f16: Vec<u16> = src.iter().map(|x| bits::f32_to_f16_bits(x.to_bits())).collect();
        for isa in Isa::available() {
            // Unaligned destination too: start one element into a larger buffer.
            let mut out_bf16 = vec![bf16::ZERO; src.len() + 1];
            convert::f32_to_bf16_at(isa, src, &mut out_bf16[1..]).unwrap();
            prop_assert_eq!(bytemuck::cast_slice::<bf16, u16>(&out_bf16[1..]), &want_bf16[..], "{} f32->bf16", isa);
            let mut out_f16 = vec![f16::ZERO; src.len() + 1];
            convert::f32_to_f16_at(isa, src, &mut out_f16[1..]).unwrap();
            prop_assert_eq!(bytemuck::cast_slice::<f16, u16>(&out_f16[1..]), &want_f16[..], "{} f32->f16", isa);

            let mut wide = vec![0f32; src.len()];
            convert::bf16_to_f32_at(isa, &out_bf16[1..], &mut wide).unwrap();
            for (w, h) in wide.iter().zip(&want_bf16) {
                prop_assert_eq!(w.to_bits(), bits::bf16_to_f32_bits(*h), "{} bf16->f32", isa);
            }
            convert::f16_to_f32_at(isa, &out_f16[1..], &mut wide).unwrap();
            for (w, h) in wide.iter().zip(&want_f16) {
                prop_assert_eq!(w.to_bits(), bits::f16_to_f32_bits(*h), "{} f16->f32", isa);
            }
        }
    }

    #[test]
    fn default_dispatch_matches_half(values in prop::collection::vec(any::<f32>(), 0..=300)) {
        // `half` implements the same contract in software; agreeing with it is
        // what users mixing the two crates rely on.
        let mut out = vec![bf16::ZERO; values.len()];
        convert::f32_to_bf16(&values, &mut out);
        for (x, o) in values.iter().zip(&out) {
            prop_assert_eq!(o.to_bits(), bf16::from_f32(*x).to_bits());
        }
        let mut out = vec![f16::ZERO; values.len()];
        convert::f32_to_f16(&values, &mut out);
        for (x, o) in values.iter().zip(&out) {
            prop_assert_eq!(o.to_bits(), f16::from_f32(*x).to_bits());
        }
    }
}

#[test]
fn every_tail_length_on_every_level() {
    // Lengths that cover each tail length of the 8-, 16- and 32-element steps.
    let data: Vec<f32> = (0..200)
        .map(|i| (i as f32 - 100.0) * 0.37e-38 * (1 << (i % 31)) as f32)
        .collect();
    for isa in Isa::available() {
        for n in 0..=100 {
            let src = &data[..n];
            let mut out = vec![bf16::ZERO; n];
            convert::f32_to_bf16_at(isa, src, &mut out).unwrap();
            for (x, o) in src.iter().zip(&out) {
                assert_eq!(
                    o.to_bits(),
                    bits::f32_to_bf16_bits(x.to_bits()),
                    "{isa} n={n}"
                );
            }
            let mut out = vec![f16::ZERO; n];
            convert::f32_to_f16_at(isa, src, &mut out).unwrap();
            for (x, o) in src.iter().zip(&out) {
                assert_eq!(
                    o.to_bits(),
                    bits::f32_to_f16_bits(x.to_bits()),
                    "{isa} n={n}"
                );
            }
        }
    }
}

#[test]
fn streaming_path_is_bit_exact_at_every_alignment() {
    // Above STREAM_THRESHOLD_ELEMS the AVX-512 paths switch to non-temporal
    // stores with an alignment prologue; check several destination offsets.
    let n = convert::STREAM_THRESHOLD_ELEMS + 77;
    let src: Vec<f32> = (0..n as u32)
        .map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9)))
        .collect();
    for isa in Isa::available() {
        for offset in [0usize, 1, 5, 31] {
            let mut out = vec![bf16::ZERO; n + offset];
            convert::f32_to_bf16_at(isa, &src, &mut out[offset..]).unwrap();
            let mut back = vec![0f32; n + offset];
            convert::bf16_to_f32_at(isa, &out[offset..], &mut back[offset..]).unwrap();
            for (i, x) in src.iter().enumerate() {
                let h = bits::f32_to_bf16_bits(x.to_bits());
                assert_eq!(out[offset + i].to_bits(), h, "{isa} offset {offset} i {i}");
                assert_eq!(back[offset + i].to_bits(), bits::bf16_to_f32_bits(h));
            }
            let mut out = vec![f16::ZERO; n + offset];
            convert::f32_to_f16_at(isa, &src, &mut out[offset..]).unwrap();
            convert::f16_to_f32_at(isa, &out[offset..], &mut back[offset..]).unwrap();
            for (i, x) in src.iter().enumerate() {
                let h = bits::f32_to_f16_bits(x.to_bits());
                assert_eq!(out[offset + i].to_bits(), h, "{isa} offset {offset} i {i}");
                assert_eq!(back[offset + i].to_bits(), bits::f16_to_f32_bits(h));
            }
        }
    }
}

/// Memory with an inaccessible page on each side, so any read or write
/// outside `[start, end)` of the usable pages faults and kills the test.
#[cfg(unix)]
mod guarded {
    pub struct Guarded {
        base: *mut u8,
        total: usize,
        page: usize,
        usable: usize,
    }

    impl Guarded {
        pub fn new(usable_pages: usize) -> Guarded {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            let total = page * (usable_pages + 2);
            // SAFETY: an anonymous private mapping with no address hint; the
            // result is checked against MAP_FAILED below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    total,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED, "mmap failed");
            let base = base.cast::<u8>();
            // SAFETY: both ranges are whole pages inside the mapping created above.
            unsafe {
                assert_eq!(libc::mprotect(base.cast(), page, libc::PROT_NONE), 0);
                assert_eq!(
                    libc::mprotect(
                        base.add(page + usable_pages * page).cast(),
                        page,
                        libc::PROT_NONE
                    ),
                    0
                );
            }
            Guarded {
                base,
                total,
                page,
                usable: usable_pages * page,
            }
        }

        /// `len` elements of T placed flush against the leading guard page
        /// (`at_end == false`) or the trailing one (`at_end == true`).
        pub fn slice<T: bytemuck::Pod>(&mut self, len: usize, at_end: bool) -> &mut [T] {
            let bytes = len * size_of::<T>();
            assert!(bytes <= self.usable);
            let offset = if at_end {
                self.page + self.usable - bytes
            } else {
                self.page
            };
            // SAFETY: [offset, offset + bytes) lies in the read-write pages of the
            // mapping, which this struct owns for the lifetime of the borrow;
            // offsets are multiples of size_of::<T>() (page size and `bytes`
            // are), and T is Pod, so any bit pattern is a valid value.
            unsafe {
                let ptr = self.base.add(offset).cast::<T>();
                ptr.write_bytes(0, len);
                std::slice::from_raw_parts_mut(ptr, len)
            }
        }
    }

    impl Drop for Guarded {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping created in `new`.
            unsafe { libc::munmap(self.base.cast(), self.total) };
        }
    }
}

#[cfg(unix)]
#[test]
fn no_level_reads_or_writes_outside_its_slices() {
    use guarded::Guarded;
    let mut src_mem = Guarded::new(2);
    let mut dst_mem = Guarded::new(2);
    let lengths: Vec<usize> = (0..=70).chain([127, 128, 129, 1000]).collect();
    for isa in Isa::available() {
        for &n in &lengths {
            for at_end in [true, false] {
                let src: &mut [f32] = src_mem.slice(n, at_end);
                src.iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = i as f32 * 1.5e-3);
                let dst: &mut [bf16] = dst_mem.slice(n, at_end);
                convert::f32_to_bf16_at(isa, src, dst).unwrap();
                let dst: &mut [f16] = dst_mem.slice(n, at_end);
                convert::f32_to_f16_at(isa, src, dst).unwrap();

                let half_src: &mut [bf16] = src_mem.slice(n, at_end);
                half_src
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = bf16::from_f32(i as f32));
                let wide: &mut [f32] = dst_mem.slice(n, at_end);
                convert::bf16_to_f32_at(isa, half_src, wide).unwrap();
                let f16_src: &mut [f16] = src_mem.slice(n, at_end);
                let wide: &mut [f32] = dst_mem.slice(n, at_end);
                convert::f16_to_f32_at(isa, f16_src, wide).unwrap();
            }
        }
    }
}
