//! The accuracy-driven mixed-precision tuner.
