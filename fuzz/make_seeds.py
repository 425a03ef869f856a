#!/usr/bin/env python3
"""Writes the hand-made seed corpora under fuzz/corpus/ (ONNX seeds are
copied from ../shared/onnx-backend, see corpus/README.md). Rerunning it
rewrites the same files."""
import json, os, shutil, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
C = os.path.join(HERE, "corpus")

def put(target, name, data):
    d = os.path.join(C, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def st(tensors, metadata=None, header_override=None, trailing=b""):
    """safetensors bytes from [(name, dtype, shape, payload bytes)]."""
    h, off, body = {}, 0, b""
    for name, dt, shape, payload in tensors:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(payload)]}
        off += len(payload)
        body += payload
    if metadata is not None:
        h["__metadata__"] = metadata
    js = header_override if header_override is not None else json.dumps(h).encode()
    return struct.pack("<Q", len(js)) + js + body + trailing

f32 = lambda *v: struct.pack("<%df" % len(v), *v)
i64 = lambda *v: struct.pack("<%dq" % len(v), *v)

# --- safetensors_bytes
put("safetensors_bytes", "f32_2x2", st([("w", "F32", [2, 2], f32(1, -2, 3.5, 1e-40))]))
put("safetensors_bytes", "mixed", st([("a", "BF16", [3], b"\x80\x3f\x00\xc0\x7f\x7f"),
                                      ("b", "F16", [1, 2], b"\x00\x3c\x00\x7c"),
                                      ("c", "I64", [2], i64(1, -1)),
                                      ("d", "BOOL", [2], b"\x01\x00"),
                                      ("e", "I32", [], struct.pack("<i", 7))],
                                     metadata={"format": "pt"}))
put("safetensors_bytes", "empty", st([]))
put("safetensors_bytes", "zero_dim", st([("z", "F32", [0, 5], b"")]))
put("safetensors_bytes", "u8_unsupported", st([("u", "U8", [2], b"\x01\x02")]))
put("safetensors_bytes", "truncated", st([("w", "F32", [4], f32(1, 2, 3, 4))])[:-3])
put("safetensors_bytes", "overflow_shape",
    st([], header_override=b'{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}'))
put("safetensors_bytes", "zero_times_huge",
    st([], header_override=b'{"w":{"dtype":"F32","shape":[2,9223372036854775807,0],"data_offsets":[0,0]}}'))
put("safetensors_bytes", "huge_header_len", struct.pack("<Q", 1 << 62) + b"{}")
put("safetensors_bytes", "bad_json", st([], header_override=b'{"w":{"dtype":"F32",'))

# --- eval_data: the fuzzing graph has x [batch, 3] f32 and ids [batch] i64
put("eval_data", "match", st([("x", "F32", [2, 3], f32(*range(6))), ("ids", "I64", [2], i64(0, 4)),
                              ("labels", "I64", [2], i64(1, 0))]))
put("eval_data", "ids_out_of_range", st([("x", "F32", [1, 3], f32(1, 2, 3)), ("ids", "I64", [1], i64(-7))]))
put("eval_data", "batch_mismatch", st([("x", "F32", [2, 3], f32(*range(6))), ("ids", "I64", [3], i64(0, 1, 2))]))
put("eval_data", "wrong_dtype", st([("x", "F16", [1, 3], b"\x00\x3c" * 3), ("ids", "I64", [1], i64(0))]))
put("eval_data", "missing_input", st([("x", "F32", [1, 3], f32(1, 2, 3))]))
put("eval_data", "empty_batch", st([("x", "F32", [0, 3], b""), ("ids", "I64", [0], b"")]))

# --- plan_json (node names of the fuzzing graph: embed add_embed fc1 act ln fc2 flat prob)
put("plan_json", "all_bf16", json.dumps({"nodes": {n: "bf16" for n in ["add_embed", "fc1", "act", "ln", "fc2", "prob"]}}))
put("plan_json", "mixed", json.dumps({"nodes": {"fc1": "f16", "act": "bf16", "fc2": "f32"}}))
put("plan_json", "empty", '{"nodes": {}}')
put("plan_json", "unknown_node", '{"nodes": {"nope": "bf16"}}')
put("plan_json", "not_lowerable", '{"nodes": {"flat": "bf16", "embed": "f16"}}')
put("plan_json", "bad_type", '{"nodes": {"fc1": "f64"}}')
put("plan_json", "extra_field", '{"nodes": {}, "x": 1}')
put("plan_json", "deep", "[" * 200 + "]" * 200)

# --- convert_differential: first byte is an offset, then f32 words
specials = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFBFFFFF,
            0x00000001, 0x807FFFFF, 0x00800000, 0x3F808000, 0x3F818000, 0x3F80C000, 0x477FF000,
            0x477FEFFF, 0x38800000, 0x33000000, 0x33000001, 0x387FC000, 0x7F7FFFFF, 0x7F7F8000,
            0x3F800FFF, 0x3F801000, 0x3F803000, 0x7F7F7FFF]
put("convert_differential", "specials", b"\x00" + struct.pack("<%dI" % len(specials), *specials))
put("convert_differential", "specials_off3", b"\x03" + struct.pack("<%dI" % (3 * len(specials)), *(specials * 3)))
put("convert_differential", "ramp_long", b"\x05" + struct.pack("<200I", *[(0x3F7FFF00 + 0x1357 * i) & 0xFFFFFFFF for i in range(200)]))

# --- gemm_differential: types, m, n, k, flags, pads, alpha, beta, then values
def g(types, m, n, k, flags, pads, alpha, beta, seed=0):
    return bytes([types, m, n, k, flags, pads, alpha, beta]) + bytes((seed * 31 + i * 17) % 256 for i in range(64))
put("gemm_differential", "f32_small", g(0, 3, 5, 7, 0, 0, 0, 0))
put("gemm_differential", "f32_big_m_bias_gelu", g(0, 33, 40, 48, 4 | (2 << 3), 0b010101, 0, 1, 1))
put("gemm_differential", "bf16_trans_b", g(1, 4, 17, 31, 2 | 4 | (1 << 3), 0b000100, 5, 2, 2))
put("gemm_differential", "f16_out_f16", g(8, 20, 9, 13, 1 | (3 << 3), 0b111111, 3, 3, 3))
put("gemm_differential", "alpha0_nan", g(4, 18, 18, 18, 0x80 | 3, 0, 4, 1, 4))
put("gemm_differential", "k0", g(0, 5, 5, 0, 4, 0, 0, 1, 5))
put("gemm_differential", "gemv_n1", g(3, 1, 1, 48, 0, 0, 2, 0, 6))

# --- onnx_bytes: small models from the ONNX backend test data
SRC = os.path.join(HERE, "..", "..", "shared", "onnx-backend")
models = ["pytorch-converted/test_LeakyReLU", "pytorch-converted/test_log_softmax_dim3",
          "simple/test_expand_shape_model1", "pytorch-operator/test_operator_concat2",
          "pytorch-operator/test_operator_chunk", "pytorch-converted/test_PReLU_2d",
          "pytorch-operator/test_operator_reduced_sum_keepdim", "pytorch-operator/test_operator_add_broadcast",
          "pytorch-operator/test_operator_permute2", "pytorch-operator/test_operator_pad",
          "pytorch-converted/test_MaxPool2d", "pytorch-converted/test_AvgPool2d_stride",
          "pytorch-converted/test_Embedding", "pytorch-operator/test_operator_non_float_params",
          "pytorch-operator/test_operator_repeat", "pytorch-converted/test_GLU",
          "pytorch-operator/test_operator_index", "pytorch-converted/test_Linear",
          "pytorch-converted/test_Conv1d", "pytorch-converted/test_Softsign"]
if os.path.isdir(SRC):
    for m in models:
        src = os.path.join(SRC, m, "model.onnx")
        if os.path.exists(src) and os.path.getsize(src) < 4096:
            os.makedirs(os.path.join(C, "onnx_bytes"), exist_ok=True)
            shutil.copy(src, os.path.join(C, "onnx_bytes", os.path.basename(m) + ".onnx"))
    pb = os.path.join(SRC, "pytorch-converted/test_LeakyReLU/test_data_set_0/input_0.pb")
    if os.path.exists(pb) and os.path.getsize(pb) < 4096:
        shutil.copy(pb, os.path.join(C, "onnx_bytes", "tensor_input_0.pb"))
else:
    print("onnx-backend data not found; onnx_bytes seeds not refreshed", file=sys.stderr)
