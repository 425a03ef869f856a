//! The op-graph: tensors, named ops, builder, safetensors weights, executor.
