#!/usr/bin/env python3
"""mixprec vs onnxruntime (CPUExecutionProvider) on the same ONNX models,
inputs and thread counts. See benches/README.md for how to run it and the
figures. Not a test: it needs onnxruntime (PyPI) and a release `mixprec`.

Models are built here with onnx.helper (random weights, fixed seed) in a
temporary folder; each model's eval input is written as safetensors (one
tensor per graph input, by name) and fed to both runtimes.

Threads: ORT gets intra_op_num_threads = T (inter_op 1, sequential), mixprec
`--threads T` (its kernels' team: GEMMs, convolutions, and the elementwise,
normalization and pooling steps that split into enough work). The 1-thread
runs of both are also pinned to CPU 0 (`taskset -c 0`), so that both sides
see the same core.
"""

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

OPSET = 17


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _w(rng, shape, fan_in):
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _save(graph, path):
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mixprec-bench"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def build_mlp(rng, path):
    """MatMul+Add+Relu, 1024-4096-4096-1024, batch 64."""
    dims = [1024, 4096, 4096, 1024]
    batch = 64
    nodes, inits = [], []
    cur = "x"
    for i in range(3):
        k, n = dims[i], dims[i + 1]
        inits += [_init(f"w{i}", _w(rng, (k, n), k)), _init(f"b{i}", _w(rng, (n,), 1) * 0.1)]
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"mm{i}"], name=f"mm{i}"))
        out = f"fc{i}" if i < 2 else "y"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out], name=f"add{i}"))
        cur = out
        if i < 2:
            nodes.append(helper.make_node("Relu", [cur], [f"relu{i}"], name=f"relu{i}"))
            cur = f"relu{i}"
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, dims[-1]])],
        inits,
    )
    _save(g, path)
    return {"x": rng.standard_normal((batch, dims[0])).astype(np.float32)}


def build_transformer(rng, path):
    """One post-LN encoder block: d=768, 12 heads, MLP 3072 with erf GELU,
    seq 128, batch 4."""
    b, s, d, h, f = 4, 128, 768, 12, 3072
    hd = d // h
    nodes, inits = [], []

    def N(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, name=outs[0], **kw))

    def linear(name, x, k, n):
        inits.extend([_init(f"{name}.w", _w(rng, (k, n), k)), _init(f"{name}.b", _w(rng, (n,), 1) * 0.02)])
        N("MatMul", [x, f"{name}.w"], [f"{name}.mm"])
        N("Add", [f"{name}.mm", f"{name}.b"], [name])
        return name

    inits += [
        _init("heads_shape", np.array([b, s, h, hd], np.int64)),
        _init("model_shape", np.array([b, s, d], np.int64)),
        _init("inv_sqrt_hd", np.array(1.0 / np.sqrt(hd), np.float32)),
        _init("sqrt2", np.array(np.sqrt(2.0), np.float32)),
        _init("one", np.array(1.0, np.float32)),
        _init("half", np.array(0.5, np.float32)),
        _init("ln1.g", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)),
        _init("ln1.b", (0.1 * rng.standard_normal(d)).astype(np.float32)),
        _init("ln2.g", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)),
        _init("ln2.b", (0.1 * rng.standard_normal(d)).astype(np.float32)),
    ]
    for t in ("q", "k", "v"):
        linear(t, "x", d, d)
        N("Reshape", [t, "heads_shape"], [f"{t}.heads"])
    N("Transpose", ["q.heads"], ["q.t"], perm=[0, 2, 1, 3])  # [b, h, s, hd]
    N("Transpose", ["k.heads"], ["k.t"], perm=[0, 2, 3, 1])  # [b, h, hd, s]
    N("Transpose", ["v.heads"], ["v.t"], perm=[0, 2, 1, 3])  # [b, h, s, hd]
    N("MatMul", ["q.t", "k.t"], ["scores"])
    N("Mul", ["scores", "inv_sqrt_hd"], ["scores.scaled"])
    N("Softmax", ["scores.scaled"], ["probs"], axis=-1)
    N("MatMul", ["probs", "v.t"], ["ctx"])
    N("Transpose", ["ctx"], ["ctx.t"], perm=[0, 2, 1, 3])
    N("Reshape", ["ctx.t", "model_shape"], ["ctx.flat"])
    linear("proj", "ctx.flat", d, d)
    N("Add", ["x", "proj"], ["res1"])
    N("LayerNormalization", ["res1", "ln1.g", "ln1.b"], ["ln1"], axis=-1, epsilon=1e-5)
    linear("fc1", "ln1", d, f)
    # GELU, erf form: 0.5 * x * (1 + erf(x / sqrt 2)) as exported by PyTorch.
    N("Div", ["fc1", "sqrt2"], ["gelu.div"])
    N("Erf", ["gelu.div"], ["gelu.erf"])
    N("Add", ["gelu.erf", "one"], ["gelu.add"])
    N("Mul", ["fc1", "gelu.add"], ["gelu.mul"])
    N("Mul", ["gelu.mul", "half"], ["gelu"])
    linear("fc2", "gelu", f, d)
    N("Add", ["ln1", "fc2"], ["res2"])
    N("LayerNormalization", ["res2", "ln2.g", "ln2.b"], ["y"], axis=-1, epsilon=1e-5)
    g = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, s, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, s, d])],
        inits,
    )
    _save(g, path)
    return {"x": rng.standard_normal((b, s, d)).astype(np.float32)}


def build_conv(rng, path, b=8, c=64, hw=56, name="convnet"):
    """Conv 3x3 64->64 (pad 1) + Relu, three times, on 8x64x56x56."""
    nodes, inits = [], []
    cur = "x"
    for i in range(3):
        inits += [
            _init(f"conv{i}.w", _w(rng, (c, c, 3, 3), c * 9)),
            _init(f"conv{i}.b", _w(rng, (c,), 1) * 0.1),
        ]
        nodes.append(
            helper.make_node(
                "Conv", [cur, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], name=f"conv{i}",
                kernel_shape=[3, 3], pads=[1, 1, 1, 1],
            )
        )
        out = "y" if i == 2 else f"relu{i}"
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [out], name=f"relu{i}"))
        cur = out
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, c, hw, hw])],
        inits,
    )
    _save(g, path)
    return {"x": rng.standard_normal((b, c, hw, hw)).astype(np.float32)}


def build_convdeep(rng, path):
    """build_conv's stack at a ResNet's last stage, batch 1: 512 channels
    on 7x7, where the weights (9.4 MB per conv) outweigh the image."""
    return build_conv(rng, path, b=1, c=512, hw=7, name="convdeep")


def build_resnet(rng, path):
    """ResNet-18 at batch 1 on 224x224, as torch.onnx exports it in eval mode
    (BatchNorm folded into the convs' weights and biases): a 7x7 stride-2
    stem, MaxPool, eight BasicBlocks (stride-2 3x3 convs and 1x1 stride-2
    shortcuts where the width doubles, residual Add + Relu), global average
    pool and a 1000-way Gemm. The strided and 3-channel convs, the pooling
    and the residual adds are what the other conv models lack."""
    nodes, inits = [], []

    def conv(x, name, cin, cout, k, stride, relu):
        inits.extend([
            _init(f"{name}.w", _w(rng, (cout, cin, k, k), cin * k * k)),
            _init(f"{name}.b", _w(rng, (cout,), 1) * 0.1),
        ])
        p = k // 2
        nodes.append(helper.make_node(
            "Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p],
        ))
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    x = conv("x", "stem", 3, 64, 7, 2, True)
    nodes.append(helper.make_node(
        "MaxPool", [x], ["pool"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    ))
    x, cin = "pool", 64
    for stage, cout in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"layer{stage + 1}.{block}"
            h = conv(x, f"{name}.conv1", cin, cout, 3, stride, True)
            h = conv(h, f"{name}.conv2", cout, cout, 3, 1, False)
            short = conv(x, f"{name}.down", cin, cout, 1, stride, False) if stride != 1 else x
            nodes.append(helper.make_node("Add", [h, short], [f"{name}.add"], name=f"{name}.add"))
            nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"{name}.out"))
            x, cin = f"{name}.out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat", axis=1))
    inits.extend([_init("fc.w", _w(rng, (1000, 512), 512)), _init("fc.b", _w(rng, (1000,), 1) * 0.1)])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1))
    g = helper.make_graph(
        nodes,
        "resnet18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])],
        inits,
    )
    _save(g, path)
    return {"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}


MODELS = {
    "mlp": build_mlp,
    "transformer": build_transformer,
    "conv": build_conv,
    "convdeep": build_convdeep,
    "resnet": build_resnet,
}


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_median_ms(sess, feeds, runs, warmup):
    for _ in range(warmup):
        sess.run(None, feeds)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def pinned(threads):
    return ["taskset", "-c", "0"] if threads == 1 else []


def mixprec_bench(exe, model, data, plan, threads):
    """Returns {plan name: ms} from `mixprec bench --json` (fp32 + the plan)."""
    cmd = pinned(threads) + [exe, "--threads", str(threads), "bench", "--model", model]
    cmd += ["--data", data, "--json"]
    if plan:
        cmd += ["--plan", plan]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        row = json.loads(line)
        if row.get("kernel") == "model" and row.get("unit") == "ms (median)":
            # shape: "model=M batch=B plan=NAME (counts)"
            name = row["shape"].split(" plan=", 1)[1].rsplit(" (", 1)[0]
            res["fp32" if name == "fp32" else "plan"] = row["value"]
    return res


def make_plans(exe, model, data, tmp, stem):
    """All-bf16 plan via the tuner with a tolerance it cannot fail (so its
    first all-low trial passes); the f16 plan is the same nodes in f16."""
    bf16 = os.path.join(tmp, f"{stem}.bf16.json")
    subprocess.run(
        [exe, "tune", "--model", model, "--data", data, "--metric", "cosine",
         "--tolerable-loss", "0.5", "--dtype", "bf16", "--max-trials", "1", "--plan-out", bf16],
        check=True, capture_output=True, text=True,
    )
    with open(bf16) as fh:
        plan = json.load(fh)
    nodes = plan["nodes"]
    low = sum(v != "f32" for v in nodes.values())
    f16 = os.path.join(tmp, f"{stem}.f16.json")
    with open(f16, "w") as fh:
        json.dump({"nodes": {k: ("f16" if v == "bf16" else v) for k, v in nodes.items()}}, fh)
    return bf16, f16, low, len(nodes)


def mixprec_run(exe, model, data, plan, out):
    cmd = [exe, "run", "--model", model, "--input", data, "--output", out]
    if plan:
        cmd += ["--plan", plan]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return load_file(out)


def spread(xs):
    """'median' or 'median [min-max]' over repeats."""
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixprec", default=os.environ.get("MIXPREC_BIN", "/work/target-ort/release/mixprec"),
                    help="path to a release mixprec binary (env MIXPREC_BIN)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of " + ",".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30, help="ORT timed runs per repeat (median)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="whole measurement repeats (spread)")
    ap.add_argument("--keep", help="folder to keep the models, inputs and plans in")
    ap.add_argument("--json-out", help="write all raw figures here")
    args = ap.parse_args()

    exe = args.mixprec
    if not os.path.exists(exe):
        sys.exit(f"no mixprec binary at {exe}: cargo build --release --bin mixprec, or pass --mixprec")
    if shutil.which("taskset") is None:
        sys.exit("taskset (util-linux) is needed for the 1-thread mixprec runs")
    threads = [int(t) for t in args.threads.split(",")]
    tmp = args.keep or tempfile.mkdtemp(prefix="mixprec-ort-")
    os.makedirs(tmp, exist_ok=True)
    rng = np.random.default_rng(20240611)

    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}")
    print(f"mixprec: {exe}; files in {tmp}")
    rows, raw = [], {}
    all_cpus = os.sched_getaffinity(0)
    for name in args.models.split(","):
        mpath = os.path.join(tmp, f"{name}.onnx")
        dpath = os.path.join(tmp, f"{name}.in.safetensors")
        feeds = MODELS[name](rng, mpath)
        save_file(feeds, dpath)
        bf16, f16, low, total = make_plans(exe, mpath, dpath, tmp, name)

        # Agreement: mixprec run vs ORT (2 threads, ORT_ENABLE_ALL) on the eval input.
        ref = ort_session(mpath, max(threads)).run(None, feeds)
        out_names = [o.name for o in ort_session(mpath, 1).get_outputs()]
        print(f"\n{name}: {low}/{total} plan nodes lowered; outputs vs ORT f32 "
              "(max abs error, max |ref|):")
        for label, plan in (("f32", None), ("bf16", bf16), ("f16", f16)):
            got = mixprec_run(exe, mpath, dpath, plan, os.path.join(tmp, f"{name}.{label}.out.safetensors"))
            for oname, r in zip(out_names, ref):
                err = float(np.max(np.abs(got[oname].astype(np.float64) - r)))
                print(f"  {label:>4} {oname}: max abs err {err:.3e}  (max |ref| {float(np.max(np.abs(r))):.3g})")

        for t in threads:
            res = {"ort": [], "f32": [], "bf16": [], "f16": []}
            for _ in range(args.repeats):
                if t == 1:
                    os.sched_setaffinity(0, {min(all_cpus)})
                sess = ort_session(mpath, t)
                res["ort"].append(ort_median_ms(sess, feeds, args.runs, args.warmup))
                # No ORT session (and no spinning ORT worker thread) is alive
                # while mixprec is timed.
                del sess
                gc.collect()
                os.sched_setaffinity(0, all_cpus)
                a = mixprec_bench(exe, mpath, dpath, bf16, t)
                b = mixprec_bench(exe, mpath, dpath, f16, t)
                # Each bench call measures fp32 too; both are samples.
                res["f32"] += [a["fp32"], b["fp32"]]
                res["bf16"].append(a["plan"])
                res["f16"].append(b["plan"])
            raw[f"{name}/t{t}"] = res
            ratio = statistics.median(res["f32"]) / statistics.median(res["ort"])
            rows.append((name, t, spread(res["ort"]), spread(res["f32"]), f"{ratio:.2f}",
                         spread(res["bf16"]), spread(res["f16"])))
            print(f"  threads {t}: ORT {spread(res['ort'])} ms, mixprec f32 {spread(res['f32'])} ms "
                  f"(ratio {ratio:.2f}), bf16 {spread(res['bf16'])}, f16 {spread(res['f16'])}")

    hdr = ("model", "threads", "ORT f32 ms", "mixprec f32 ms", "ratio", "mixprec bf16 ms", "mixprec f16 ms")
    print("\nmedian [min-max] over repeats; ratio = mixprec f32 / ORT f32 (below 1: mixprec faster)\n")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(raw, fh, indent=1)
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
