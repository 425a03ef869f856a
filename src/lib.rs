pub use mixprec_kernels as kernels;
