#!/usr/bin/env bash
# One device call per part, each well inside the 10-minute limit; full logs and JSON land in $OUT.
#   bash benchmarks/gpu_suite.sh sla-e2e     # issue 4: VGGT-1B teacher vs SLA student, 8/32/100 frames
#   bash benchmarks/gpu_suite.sh plugin      # issue 6: the plugin's AOT PTX launched as TensorRT would
#   bash benchmarks/gpu_suite.sh onnx1b      # issue 6: full-size student ONNX + onnxruntime parity, 2 frames
#   bash benchmarks/gpu_suite.sh fp8         # issue 5: FP8 GEMMs, bf16-SLA vs FP8-SLA latency, real vs fake FP8
#   bash benchmarks/gpu_suite.sh distill     # issue 5: distillation closes the gap (VGGT-1B size and tiny)
#   bash benchmarks/gpu_suite.sh runtime     # issue 10: GPU tests of TorchRuntime + SLA, SDPA backends
#   BENCH_FRAMES=2,8,32,100 BENCH_ARGS="--reps 10" bash benchmarks/gpu_suite.sh bench   # issue 9/10: lite3r bench
#   bash benchmarks/gpu_suite.sh pt2         # issue 11: SLA kernels on CUDA, then the VGGT-1B student as model.pt2
# ModelOpt / Polygraphy are not on the GPU image: carry them as wheels in .whl (see docs/gpu.md).
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=src:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for part in "$@"; do
  echo "=== $part ==="
  case "$part" in
    sla-e2e) python3 benchmarks/bench_vggt.py --frames 8 32 100 --variants teacher student-kh0.05 --reps 3 \
               --out "$OUT/sla_e2e.json" 2>&1 | tee "$OUT/sla_e2e.log" ;;
    plugin) { python3 scripts/check_plugin_ptx_gpu.py \
              && python3 scripts/check_plugin_ptx_gpu.py --dtype fp16 --head-dim 128 --block-q 128; } 2>&1 \
              | tee "$OUT/plugin.log" ;;
    onnx1b) python3 scripts/export_vggt1b_parity.py --out /tmp/onnx1b 2>&1 | tee "$OUT/onnx1b.log"
            cp /tmp/onnx1b/parity.json "$OUT/onnx1b_parity.json" ;;
    fp8) python3 benchmarks/bench_fp8.py --out "$OUT/fp8_vggt1b.json" 2>&1 | tee "$OUT/fp8.log" ;;
    distill) { python3 benchmarks/bench_distill.py --steps 60 --out "$OUT/distill_vggt1b.json" \
               && python3 benchmarks/bench_distill.py --model vggt-tiny --views 4 --size 112 --steps 100 \
                    --out "$OUT/distill_tiny.json"; } 2>&1 | tee "$OUT/distill.log" ;;
    runtime) { python3 -m pytest -q -x -p no:cacheprovider tests/deploy/test_torch_runtime.py tests/sla/test_sla_gpu.py \
               && python3 benchmarks/bench_sdpa_backends.py --frames 2 8 32; } 2>&1 | tee "$OUT/runtime.log" ;;
    pt2) { python3 -m pytest -q -p no:cacheprovider tests/sla/test_sla_gpu.py
           python3 benchmarks/bench_pt2.py --out "$OUT/pt2"; } 2>&1 | tee "$OUT/pt2.log" ;;
    bench) python3 -m lite3r.cli bench --model vggt --frames "$BENCH_FRAMES" $BENCH_ARGS --out "$OUT/bench" 2>&1 \
             | tee "$OUT/bench.log" ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
